"""Change-aware runs: a first full ``kedro run``, a second one with nothing changed, and
one after adding 10% new images, each timed.

    .venv/bin/python benchmarks/incremental_run.py [../shared/datasets/caltech101-mini]

In a temporary copy of the project (code and conf, an empty data/), with an environment
``bench`` made for it: the photos as an ``image_folder`` dataset, ViT-B-32 with random
weights (no download; the speed is that of the real model), 2 shots, the default
feature methods, LoRA and BitFit for 20 steps each. 10% of each class's photos are held
back and copied in before the third run. Two layouts, each in its own copy:

- ``class folders`` (no split folders, so the hash split applies): the added photos
  join train, val or test by their hash, and may enter the few-shot sample;
- ``split folders`` (``train/`` and ``test/``; val carved from train): the added photos
  go to ``test/``, as when a user grows the evaluation set.

Targets (issue 14): the unchanged rerun under 10% of the first run's time, the 10%
addition under 25%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT = PROJECT.parent / "shared" / "datasets" / "caltech101-mini"
ENV = {
    "globals.yml": """shots: 2
few_shot_seed: 1
model: {name: ViT-B-32, pretrained: null, checkpoint: null, quick_gelu: null}
""",
    "parameters.yml": """datasets: [photos]
dataset_configs:
  photos: {source: image_folder, root: data/01_raw/photos, allow_repeats: true}
""",
    "parameters_lora.yml": """adaptation_methods:
  lora: {method: lora, max_steps: 20, eval_every: 10, checkpoint_every: 10, batch_size: 16}
  bitfit: {method: bitfit, max_steps: 20, eval_every: 10, checkpoint_every: 10, batch_size: 16}
""",
}


def _copy_project(root: Path) -> None:
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copytree(PROJECT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", root / "pyproject.toml")
    (root / "conf" / "bench").mkdir()
    for name, text in ENV.items():
        (root / "conf" / "bench" / name).write_text(text)


def _split_photos(source: Path, kept: Path, held: Path, split_folders: bool) -> int:
    """Copy the class folders into ``kept``, holding back every tenth photo per class
    into ``held``; returns how many were held back. ``split_folders``: every third kept
    photo goes under ``test/``, the others under ``train/``, and those held back under
    ``test/``."""
    count = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
        for index, photo in enumerate(photos):
            target = (held if index % 10 == 9 else kept)
            if split_folders:
                target /= "test" if index % 10 == 9 or index % 3 == 2 else "train"
            target /= folder.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target / photo.name)
            count += index % 10 == 9
    return count


def _run(root: Path) -> tuple[float, dict[str, list[str]]]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kedro", "run", "--env", "bench"], cwd=root,
                   check=True, capture_output=True, text=True,
                   env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    seconds = time.perf_counter() - start
    return seconds, json.loads((root / "data/.fingerprints/_last_run.json").read_text())


def _slowest(seconds: dict[str, float], count: int = 6) -> str:
    top = sorted(seconds.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {value:.1f}" for name, value in top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("photos", nargs="?", type=Path, default=DEFAULT)
    args = parser.parse_args()
    if not args.photos.is_dir():
        sys.exit(f"No folder {args.photos}: pass a folder of class folders of photos.")
    rows = []
    for layout in ("class folders", "split folders"):
        rows += _scenario(args.photos, layout)
    print("\n| layout | run | seconds | of the first | nodes run | reused |\n"
          "|---|---|---|---|---|---|")
    for layout, label, seconds, first, ran, reused in rows:
        print(f"| {layout} | {label} | {seconds:.1f} | {100 * seconds / first:.0f}% | {ran} "
              f"| {reused} |")


def _scenario(photos: Path, layout: str) -> list[tuple]:
    """The three runs in a fresh copy of the project with the photos in ``layout``."""
    with tempfile.TemporaryDirectory(prefix="incremental_") as temp:
        root = Path(temp)
        _copy_project(root)
        held = root / "held_back"
        added = _split_photos(photos, root / "data/01_raw/photos", held,
                              split_folders=layout == "split folders")
        rows, first = [], None
        for label in ("first, full", "second, unchanged", f"after adding {added} photos"):
            if label.startswith("after"):
                shutil.copytree(held, root / "data/01_raw/photos", dirs_exist_ok=True)
            seconds, last = _run(root)
            first = first or seconds
            rows.append((layout, label, seconds, first, len(last["ran"]), len(last["reused"])))
            print(f"{layout}, {label}: {seconds:.1f} s, ran {len(last['ran'])}, reused "
                  f"{len(last['reused'])}; in nodes {sum(last['seconds'].values()):.1f} s, "
                  f"the slowest: {_slowest(last['seconds'])}", flush=True)
            if label.startswith("after"):
                print(f"  ran: {', '.join(last['ran'])}", flush=True)
        return rows


if __name__ == "__main__":
    main()
