"""UCF101 as an image dataset: CoOp's middle frame of every video, 101 actions."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError, text_lines

_FRAMES = "UCF-101-midframes"
_LISTS = "ucfTrainTestlist"


def frame_folder(action: str) -> str:
    """CoOp's folder for an action (datasets/ucf101.py): 'ApplyEyeMakeup' ->
    'Apply_Eye_Makeup'; its class name is that with spaces."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))



class UCF101(Source):
    name = "ucf101"
    layout = (
        f"  {_FRAMES}/<Action_Name>/v_<Action>_g<nn>_c<nn>.jpg   (CoOp's UCF-101-midframes.zip)\n"
        "  split_zhou_UCF101.json    (protocol coop: CoOp's split)\n"
        f"  {_LISTS}/classInd.txt, trainlist01.txt, testlist01.txt   (protocol official)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
                                         "split_zhou_UCF101.json")
    image_dir = _FRAMES

    def remote_files(self) -> list[RemoteFile]:
        # The frames exist only as CoOp's archive on Google Drive; no md5 is published
        # for it or for UCF's split lists.
        return [
            RemoteFile.google_drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O",
                                    "UCF-101-midframes.zip", _FRAMES, extract=True),
            RemoteFile("https://www.crcv.ucf.edu/data/UCF101/"
                       "UCF101TrainTestSplits-RecognitionTask.zip",
                       "UCF101TrainTestSplits-RecognitionTask.zip", _LISTS, extract=True),
        ]

    def index(self, root: Path) -> pd.DataFrame:
        lists = root / _LISTS
        self.require(root, _FRAMES, *(f"{_LISTS}/{f}" for f in
                                      ("classInd.txt", "trainlist01.txt", "testlist01.txt")))
        actions = {}
        for line in text_lines(lists / "classInd.txt"):
            number, _, action = line.partition(" ")
            actions[action] = int(number) - 1
        if sorted(actions.values()) != list(range(len(actions))):
            raise SourceError(f"{lists / 'classInd.txt'}: class ids are not 1..{len(actions)}.")
        paths, labels, splits = [], [], []
        for listing, split in (("trainlist01.txt", "train"), ("testlist01.txt", "test")):
            for line in text_lines(lists / listing):
                action, _, video = line.split(" ")[0].partition("/")
                if action not in actions:
                    raise SourceError(f"{lists / listing}: '{line}' names no class of classInd.txt.")
                paths.append(f"{_FRAMES}/{frame_folder(action)}/{Path(video).stem}.jpg")
                labels.append(actions[action])
                splits.append(split)
        names = [frame_folder(a).replace("_", " ") for a in sorted(actions, key=actions.get)]
        return make_manifest(paths, labels, names, splits)
