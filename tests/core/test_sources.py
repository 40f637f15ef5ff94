"""Every source adapter against a tiny fixture in its dataset's real on-disk layout."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import savemat

from clip_lora_pipeline.core.dataset_settings import DatasetSettings
from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import MANIFEST_COLUMNS
from clip_lora_pipeline.core.sources import SOURCES, SourceError, get_source
from clip_lora_pipeline.core.sources.caltech101 import Caltech101
from clip_lora_pipeline.core.sources.cub import CUB200
from clip_lora_pipeline.core.sources.dtd import DTD
from clip_lora_pipeline.core.sources.eurosat import EuroSAT
from clip_lora_pipeline.core.sources.fgvc_aircraft import FGVCAircraft
from clip_lora_pipeline.core.sources.flowers102 import Flowers102
from clip_lora_pipeline.core.sources.food101 import Food101
from clip_lora_pipeline.core.sources.image_folder import ImageFolder
from clip_lora_pipeline.core.sources.imagenet import ImageNet
from clip_lora_pipeline.core.sources.imagenette import WNID_TO_NAME, Imagenette
from clip_lora_pipeline.core.sources.oxford_pets import OxfordPets
from clip_lora_pipeline.core.sources.stanford_cars import StanfordCars
from clip_lora_pipeline.core.sources.sun397 import SUN397
from clip_lora_pipeline.core.sources.synthetic import Synthetic
from clip_lora_pipeline.core.sources.ucf101 import UCF101

# CoOp's 11 few-shot datasets, then the others that read a published layout.
BENCHMARK = [
    "flowers102", "eurosat", "dtd", "oxford_pets", "caltech101", "food101", "imagenet",
    "sun397", "stanford_cars", "fgvc_aircraft", "ucf101",
]
INDEXED = [*BENCHMARK, "imagenette", "cub200"]
# Stanford Cars' publisher no longer serves its files: nothing to download.
DOWNLOADABLE = [n for n in INDEXED if n != "stanford_cars"]


def check_manifest(frame: pd.DataFrame, root: Path) -> None:
    """Columns, dtypes and paths every manifest must have."""
    assert list(frame.columns) == MANIFEST_COLUMNS
    assert frame["label"].dtype == "int64"
    assert (frame["label"] >= 0).all()
    for path in frame["path"]:
        assert not path.startswith("/") and "\\" not in path, path
        assert (root / path).is_file(), f"{path} is not a file under {root}"


def rows(frame: pd.DataFrame) -> list[tuple]:
    """(path, label, class_name, split) tuples, split None when missing."""
    return [
        (r.path, int(r.label), r.class_name, None if pd.isna(r.source_split) else r.source_split)
        for r in frame.itertuples(index=False)
    ]


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- flowers102


def make_flowers(root: Path, make_image, *, labels, trnid, valid, tstid) -> None:
    for i in range(1, len(labels) + 1):
        make_image(root / "jpg" / f"image_{i:05d}.jpg")
    # As in the published files: labels uint8, ids uint16, both 1 x N.
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(
        root / "setid.mat",
        {
            "trnid": np.array([trnid], dtype=np.uint16),
            "valid": np.array([valid], dtype=np.uint16),
            "tstid": np.array([tstid], dtype=np.uint16),
        },
    )


def test_flowers102_reads_labels_and_official_split(tmp_path, make_image):
    # image 7 is in no split list and must not appear.
    make_flowers(tmp_path, make_image, labels=[1, 1, 2, 3, 102, 2, 5],
                 trnid=[3, 1], valid=[2, 6], tstid=[4, 5])
    frame = Flowers102().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("jpg/image_00001.jpg", 0, "pink primrose", "train"),
        ("jpg/image_00002.jpg", 0, "pink primrose", "val"),
        ("jpg/image_00003.jpg", 1, "hard-leaved pocket orchid", "train"),
        ("jpg/image_00004.jpg", 2, "canterbury bells", "test"),
        ("jpg/image_00005.jpg", 101, "blackberry lily", "test"),
        ("jpg/image_00006.jpg", 1, "hard-leaved pocket orchid", "val"),
    ]


def test_flowers102_setid_without_label_fails(tmp_path, make_image):
    make_flowers(tmp_path, make_image, labels=[1, 2, 3],
                 trnid=[1], valid=[2], tstid=[3, 9])
    with pytest.raises(SourceError, match=r"image id 9 in 'tstid' has no label"):
        Flowers102().index(tmp_path)


def test_flowers102_label_out_of_range_fails(tmp_path, make_image):
    make_flowers(tmp_path, make_image, labels=[1, 103], trnid=[1], valid=[2], tstid=[])
    with pytest.raises(SourceError, match=r"labels span 1\.\.103, expected 1\.\.102"):
        Flowers102().index(tmp_path)


# --------------------------------------------------------------------------- eurosat


def test_eurosat_maps_folder_codes_to_coop_names(tmp_path, make_image):
    for name in ("AnnualCrop/AnnualCrop_1.jpg", "AnnualCrop/AnnualCrop_2.jpg",
                 "Forest/Forest_1.jpg", "SeaLake/SeaLake_7.jpg"):
        make_image(tmp_path / "2750" / name)
    frame = EuroSAT().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("2750/AnnualCrop/AnnualCrop_1.jpg", 0, "Annual Crop Land", None),
        ("2750/AnnualCrop/AnnualCrop_2.jpg", 0, "Annual Crop Land", None),
        ("2750/Forest/Forest_1.jpg", 1, "Forest", None),
        ("2750/SeaLake/SeaLake_7.jpg", 9, "Sea or Lake", None),
    ]
    assert frame["source_split"].isna().all()


def test_eurosat_unknown_folder_fails(tmp_path, make_image):
    make_image(tmp_path / "2750" / "Forest" / "Forest_1.jpg")
    make_image(tmp_path / "2750" / "Desert" / "Desert_1.jpg")
    with pytest.raises(SourceError, match=r"unexpected class folders \['Desert'\]"):
        EuroSAT().index(tmp_path)


# --------------------------------------------------------------------------- imagenette


def test_imagenette_val_folder_becomes_test_split(tmp_path, make_image):
    base = tmp_path / "imagenette2-160"
    for rel in ("train/n01440764/n01440764_1.JPEG", "train/n01440764/n01440764_2.JPEG",
                "train/n03888257/n03888257_5.JPEG", "val/n01440764/ILSVRC_val_1.JPEG",
                "val/n02102040/ILSVRC_val_2.JPEG"):
        make_image(base / rel)
    (base / "noisy_imagenette.csv").write_text("path,noisy_labels_0\n")
    frame = Imagenette().index(tmp_path, size="160px")
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("imagenette2-160/train/n01440764/n01440764_1.JPEG", 0, "tench", "train"),
        ("imagenette2-160/train/n01440764/n01440764_2.JPEG", 0, "tench", "train"),
        ("imagenette2-160/train/n03888257/n03888257_5.JPEG", 9, "parachute", "train"),
        ("imagenette2-160/val/n01440764/ILSVRC_val_1.JPEG", 0, "tench", "test"),
        ("imagenette2-160/val/n02102040/ILSVRC_val_2.JPEG", 1, "English springer", "test"),
    ]
    assert WNID_TO_NAME["n03888257"] == "parachute"
    # The default size looks for imagenette2-320, which is not there.
    with pytest.raises(SourceError, match="imagenette2-320"):
        Imagenette().index(tmp_path)


def test_imagenette_unknown_size_fails(tmp_path):
    with pytest.raises(SourceError, match=r"size must be one of .*got '64px'"):
        Imagenette().index(tmp_path, size="64px")
    with pytest.raises(SourceError, match="64px"):
        Imagenette().remote_files(size="64px")


# --------------------------------------------------------------------------- dtd


def make_dtd(root: Path, make_image) -> None:
    for texture in ("banded", "polka-dotted", "zigzagged"):
        for n in (1, 2, 3):
            make_image(root / "dtd" / "images" / texture / f"{texture}_{n:04d}.jpg")
    labels = root / "dtd" / "labels"
    for split, n in (("train", 1), ("val", 2), ("test", 3)):
        write_lines(labels / f"{split}1.txt",
                    [f"{t}/{t}_{n:04d}.jpg" for t in ("banded", "polka-dotted", "zigzagged")])
    # Partition 2 swaps train and test.
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        write_lines(labels / f"{split}2.txt",
                    [f"{t}/{t}_{n:04d}.jpg" for t in ("banded", "polka-dotted", "zigzagged")])


def test_dtd_reads_partition_lists(tmp_path, make_image):
    make_dtd(tmp_path, make_image)
    frame = DTD().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert len(frame) == 9
    by_path = {r[0]: r[1:] for r in rows(frame)}
    assert by_path["dtd/images/banded/banded_0001.jpg"] == (0, "banded", "train")
    assert by_path["dtd/images/polka-dotted/polka-dotted_0002.jpg"] == (1, "polka-dotted", "val")
    assert by_path["dtd/images/zigzagged/zigzagged_0003.jpg"] == (2, "zigzagged", "test")
    assert frame["source_split"].value_counts().to_dict() == {"train": 3, "val": 3, "test": 3}

    second = DTD().index(tmp_path, partition=2)
    by_path = {r[0]: r[1:] for r in rows(second)}
    assert by_path["dtd/images/banded/banded_0001.jpg"] == (0, "banded", "test")
    assert by_path["dtd/images/banded/banded_0003.jpg"] == (0, "banded", "train")


def test_dtd_bad_partition_or_unknown_texture_fails(tmp_path, make_image):
    make_dtd(tmp_path, make_image)
    with pytest.raises(SourceError, match="partition must be 1..10, got 11"):
        DTD().index(tmp_path, partition=11)
    write_lines(tmp_path / "dtd" / "labels" / "test1.txt", ["woven/woven_0001.jpg"])
    with pytest.raises(SourceError, match="'woven/woven_0001.jpg' names no folder"):
        DTD().index(tmp_path)


# --------------------------------------------------------------------------- oxford pets


def make_pets(root: Path, make_image, trainval: list[str], test: list[str]) -> None:
    header = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids"]
    write_lines(root / "annotations" / "trainval.txt", header + trainval)
    write_lines(root / "annotations" / "test.txt", test)
    for line in filter(None, trainval + test):
        make_image(root / "images" / f"{line.split()[0]}.jpg")


def test_oxford_pets_names_breeds_from_image_ids(tmp_path, make_image):
    make_pets(
        tmp_path, make_image,
        trainval=["Abyssinian_100 1 1 1", "american_bulldog_12 2 2 1",
                  "yorkshire_terrier_1 3 2 25"],
        test=["Abyssinian_101 1 1 1", "american_bulldog_13 2 2 1", ""],
    )
    make_image(tmp_path / "images" / "not_listed_1.jpg")
    frame = OxfordPets().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("images/Abyssinian_100.jpg", 0, "abyssinian", "train"),
        ("images/Abyssinian_101.jpg", 0, "abyssinian", "test"),
        ("images/american_bulldog_12.jpg", 1, "american bulldog", "train"),
        ("images/american_bulldog_13.jpg", 1, "american bulldog", "test"),
        ("images/yorkshire_terrier_1.jpg", 2, "yorkshire terrier", "train"),
    ]


def test_oxford_pets_conflicting_class_id_fails(tmp_path, make_image):
    make_pets(tmp_path, make_image,
              trainval=["Abyssinian_100 1 1 1"], test=["Bengal_3 1 1 2"])
    with pytest.raises(SourceError, match="class id 1 is both 'abyssinian' and 'bengal'"):
        OxfordPets().index(tmp_path)


# --------------------------------------------------------------------------- caltech101


def test_caltech101_drops_background_and_easy_faces_as_coop_does(tmp_path, make_image):
    base = tmp_path / "101_ObjectCategories"
    for rel in ("BACKGROUND_Google/image_0001.jpg", "Faces/image_0001.jpg",
                "Faces_easy/image_0001.jpg", "Faces_easy/image_0002.jpg",
                "Leopards/image_0001.jpg", "accordion/image_0001.jpg",
                "car_side/image_0001.jpg"):
        make_image(base / rel)
    frame = Caltech101().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("101_ObjectCategories/Faces/image_0001.jpg", 0, "face", None),
        ("101_ObjectCategories/Leopards/image_0001.jpg", 1, "leopard", None),
        ("101_ObjectCategories/accordion/image_0001.jpg", 2, "accordion", None),
        ("101_ObjectCategories/car_side/image_0001.jpg", 3, "car side", None),
    ]
    assert not frame["path"].str.contains("BACKGROUND_Google|Faces_easy").any()


# --------------------------------------------------------------------------- food101


def make_food(root: Path, make_image, train: dict, test: dict) -> None:
    meta = root / "food-101" / "meta"
    write_lines(meta / "classes.txt", ["apple_pie", "beef_tartare", "waffles"])
    (meta / "train.json").write_text(json.dumps(train))
    (meta / "test.json").write_text(json.dumps(test))
    for items in (*train.values(), *test.values()):
        for item in items:
            make_image(root / "food-101" / "images" / f"{item}.jpg")


def test_food101_reads_json_split_lists(tmp_path, make_image):
    make_food(
        tmp_path, make_image,
        train={"waffles": ["waffles/1"], "apple_pie": ["apple_pie/1005649"],
               "beef_tartare": ["beef_tartare/3"]},
        test={"apple_pie": ["apple_pie/101251"], "waffles": ["waffles/2"]},
    )
    frame = Food101().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("food-101/images/apple_pie/1005649.jpg", 0, "apple pie", "train"),
        ("food-101/images/apple_pie/101251.jpg", 0, "apple pie", "test"),
        ("food-101/images/beef_tartare/3.jpg", 1, "beef tartare", "train"),
        ("food-101/images/waffles/1.jpg", 2, "waffles", "train"),
        ("food-101/images/waffles/2.jpg", 2, "waffles", "test"),
    ]


def test_food101_class_missing_from_classes_txt_fails(tmp_path, make_image):
    make_food(tmp_path, make_image, train={"sushi": ["sushi/9"]}, test={})
    with pytest.raises(SourceError, match="class 'sushi' is not in classes.txt"):
        Food101().index(tmp_path)


# --------------------------------------------------------------------------- cub200


def make_cub(root: Path, make_image, labels: list[str] | None = None) -> None:
    base = root / "CUB_200_2011"
    images = [
        "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
        "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
        "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
        "003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg",
    ]
    for rel in images:
        make_image(base / "images" / rel)
    write_lines(base / "images.txt", [f"{i} {rel}" for i, rel in enumerate(images, 1)])
    write_lines(base / "image_class_labels.txt", labels or ["1 1", "2 1", "3 2", "4 3"])
    write_lines(base / "train_test_split.txt", ["1 1", "2 0", "3 1", "4 0"])
    write_lines(base / "classes.txt", ["1 001.Black_footed_Albatross",
                                       "2 002.Laysan_Albatross", "3 003.Sooty_Albatross"])


def test_cub200_reads_id_files(tmp_path, make_image):
    make_cub(tmp_path, make_image)
    frame = CUB200().index(tmp_path)
    check_manifest(frame, tmp_path)
    images = "CUB_200_2011/images/"
    assert rows(frame) == [
        (images + "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
         0, "Black footed Albatross", "test"),
        (images + "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
         0, "Black footed Albatross", "train"),
        (images + "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
         1, "Laysan Albatross", "train"),
        (images + "003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg",
         2, "Sooty Albatross", "test"),
    ]


def test_cub200_image_without_label_fails(tmp_path, make_image):
    make_cub(tmp_path, make_image, labels=["1 1", "2 1", "3 2"])
    with pytest.raises(SourceError, match=r"image ids \[4\] have no label"):
        CUB200().index(tmp_path)


# --------------------------------------------------------------------------- image_folder


def test_image_folder_flat_layout(tmp_path, make_image):
    make_image(tmp_path / "golden_retriever" / "a.jpg")
    make_image(tmp_path / "golden_retriever" / "b.png", fmt="PNG")
    make_image(tmp_path / "tabby" / "c.jpg")
    frame = ImageFolder().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("golden_retriever/a.jpg", 0, "golden retriever", None),
        ("golden_retriever/b.png", 0, "golden retriever", None),
        ("tabby/c.jpg", 1, "tabby", None),
    ]


def test_image_folder_split_layout(tmp_path, make_image):
    for rel in ("train/cat/1.jpg", "train/cat/2.jpg", "train/dog/3.jpg",
                "test/cat/4.jpg", "test/dog/5.jpg", "val/dog/6.jpg"):
        make_image(tmp_path / rel)
    frame = ImageFolder().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("test/cat/4.jpg", 0, "cat", "test"),
        ("test/dog/5.jpg", 1, "dog", "test"),
        ("train/cat/1.jpg", 0, "cat", "train"),
        ("train/cat/2.jpg", 0, "cat", "train"),
        ("train/dog/3.jpg", 1, "dog", "train"),
        ("val/dog/6.jpg", 1, "dog", "val"),
    ]


def test_image_folder_split_layout_without_val(tmp_path, make_image):
    for rel in ("train/cat/1.jpg", "train/dog/2.jpg", "test/cat/3.jpg"):
        make_image(tmp_path / rel)
    frame = ImageFolder().index(tmp_path)
    assert sorted(frame["source_split"].unique()) == ["test", "train"]
    assert frame.set_index("path")["label"].to_dict() == {
        "test/cat/3.jpg": 0, "train/cat/1.jpg": 0, "train/dog/2.jpg": 1,
    }


def test_image_folder_class_names_option(tmp_path, make_image):
    make_image(tmp_path / "n001" / "a.jpg")
    make_image(tmp_path / "n002" / "b.jpg")
    frame = ImageFolder().index(tmp_path, class_names={"n001": "red fox"})
    assert rows(frame) == [("n001/a.jpg", 0, "red fox", None), ("n002/b.jpg", 1, "n002", None)]
    with pytest.raises(SourceError, match=r"class_names names folders \['n003'\]"):
        ImageFolder().index(tmp_path, class_names={"n003": "wolf"})


def test_image_folder_empty_class_folder_fails(tmp_path, make_image):
    make_image(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: still empty
    expected = re.escape(f"class folder {tmp_path / 'dog'} is empty")
    with pytest.raises(SourceError, match=expected):
        ImageFolder().index(tmp_path)


def test_image_folder_ignores_stray_root_file_with_warning(tmp_path, make_image, caplog):
    make_image(tmp_path / "cat" / "a.jpg")
    (tmp_path / "README.txt").write_text("my photos")
    with caplog.at_level(logging.WARNING):
        frame = ImageFolder().index(tmp_path)
    assert frame["path"].tolist() == ["cat/a.jpg"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "README.txt" in warnings[0].getMessage()
    assert "ignoring 1 file(s)" in warnings[0].getMessage()


def test_image_folder_lists_non_images_but_not_hidden_files(tmp_path, make_image):
    make_image(tmp_path / "cat" / "a.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    make_image(tmp_path / "cat" / ".thumbs" / "t.jpg")
    make_image(tmp_path / ".cache" / "x.jpg")  # hidden folder at the root: not a class
    frame = ImageFolder().index(tmp_path)
    assert frame["path"].tolist() == ["cat/a.jpg", "cat/notes.txt"]
    assert frame["class_name"].tolist() == ["cat", "cat"]


def test_image_folder_split_layout_warns_on_files_beside_class_folders(
    tmp_path, make_image, caplog
):
    make_image(tmp_path / "train" / "cat" / "a.jpg")
    make_image(tmp_path / "train" / "cat" / "2024" / "b.jpg")  # nested: still the class
    (tmp_path / "train" / "labels.csv").write_text("a.jpg,cat\n")
    make_image(tmp_path / "test" / "cat" / "c.jpg")
    with caplog.at_level(logging.WARNING):
        frame = ImageFolder().index(tmp_path)
    assert frame["path"].tolist() == ["test/cat/c.jpg", "train/cat/2024/b.jpg", "train/cat/a.jpg"]
    assert "train/labels.csv" in caplog.text


def test_image_folder_mixed_split_and_class_folders_fail(tmp_path, make_image):
    make_image(tmp_path / "train" / "cat" / "a.jpg")
    make_image(tmp_path / "dog" / "b.jpg")
    expected = r"mixes split folders \['train'\] with other folders \['dog'\]"
    with pytest.raises(SourceError, match=expected):
        ImageFolder().index(tmp_path)


def test_image_folder_missing_or_classless_root_fails(tmp_path):
    with pytest.raises(SourceError, match="is not a folder"):
        ImageFolder().index(tmp_path / "nowhere")
    (tmp_path / "stray.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="has no class sub-folders"):
        ImageFolder().index(tmp_path)


# --------------------------------------------------------------------------- synthetic

SMALL = {"num_classes": 5, "images_per_class": 3, "image_size": 32, "seed": 0}


def test_synthetic_prepare_then_index(tmp_path):
    root = tmp_path / "synthetic"
    source = Synthetic()
    assert not source.is_prepared(root, **SMALL)
    source.prepare(root, **SMALL)
    assert source.is_prepared(root, **SMALL)
    frame = source.index(root, **SMALL)
    check_manifest(frame, root)
    assert len(frame) == 15
    assert frame["class_name"].value_counts().to_dict() == {
        name: 3 for name in
        ("blue square", "green triangle", "red circle", "striped pattern", "yellow star")
    }
    assert frame.drop_duplicates("label").set_index("label")["class_name"].to_dict() == {
        0: "blue square", 1: "green triangle", 2: "red circle", 3: "striped pattern",
        4: "yellow star",
    }
    assert frame["source_split"].isna().all()
    assert "red_circle/red_circle_0002.png" in set(frame["path"])


def test_synthetic_prepare_twice_does_not_rewrite(tmp_path):
    root = tmp_path / "synthetic"
    Synthetic().prepare(root, **SMALL)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    Synthetic().prepare(root, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files


def test_synthetic_new_settings_regenerate(tmp_path):
    root = tmp_path / "synthetic"
    Synthetic().prepare(root, **SMALL)
    other = {**SMALL, "images_per_class": 2, "num_classes": 2}
    with pytest.raises(SourceError, match="does not hold images for these settings"):
        Synthetic().index(root, **other)
    Synthetic().prepare(root, **other)
    frame = Synthetic().index(root, **other)
    assert len(frame) == 4
    assert sorted(frame["class_name"].unique()) == ["green triangle", "red circle"]
    assert not (root / "red_circle" / "red_circle_0002.png").exists()
    assert not (root / "blue_square").exists()
    assert not Synthetic().is_prepared(root, **SMALL)


def test_synthetic_same_seed_same_bytes_and_classes_differ(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    Synthetic().prepare(a, **SMALL)
    Synthetic().prepare(b, **SMALL)
    Synthetic().prepare(c, **{**SMALL, "seed": 1})
    names = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(names) == 15
    assert names == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    first = Path("red_circle/red_circle_0000.png")
    assert (a / first).read_bytes() != (c / first).read_bytes()
    images = {
        folder: np.asarray(Image.open(a / folder / f"{folder}_0000.png"))
        for folder in ("red_circle", "green_triangle", "blue_square", "yellow_star",
                       "striped_pattern")
    }
    assert all(image.shape == (32, 32, 3) for image in images.values())
    arrays = list(images.values())
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert not np.array_equal(arrays[i], arrays[j])


def test_synthetic_rejects_bad_settings(tmp_path):
    with pytest.raises(SourceError, match="num_classes must be 2..8, got 9"):
        Synthetic().prepare(tmp_path / "s", **{**SMALL, "num_classes": 9})
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- registry


def test_get_source_returns_each_registered_source():
    assert sorted(SOURCES) == sorted([*INDEXED, "image_folder", "synthetic", "circuits"])
    for name in SOURCES:
        assert get_source(name).name == name
    assert isinstance(get_source("flowers102"), Flowers102)


@pytest.mark.parametrize(("typo", "suggestion"), [("flowers", "flowers102"),
                                                  ("imagenett", "imagenette"),
                                                  ("stanford_car", "stanford_cars"),
                                                  ("oxford_pet", "oxford_pets")])
def test_get_source_unknown_name_suggests_close_ones(typo, suggestion):
    with pytest.raises(SourceError, match=f"Unknown data source '{typo}'") as err:
        get_source(typo)
    assert "Did you mean" in str(err.value)
    assert suggestion in str(err.value).split("Known sources")[0]


def test_get_source_unrelated_name_gives_no_suggestion():
    with pytest.raises(SourceError) as err:
        get_source("zzzzzz")
    assert "Did you mean" not in str(err.value)


def test_check_options_rejects_unknown_option():
    expected = (
        r"dataset_configs\.nette\.options: source 'imagenette' has no option\(s\) \['sise'\]; "
        r"it takes \['size'\]"
    )
    with pytest.raises(SourceError, match=expected):
        get_source("imagenette").check_options("nette", {"sise": "160px"})
    with pytest.raises(SourceError, match=r"\['colour'\]; it takes no options"):
        get_source("flowers102").check_options("flowers", {"colour": "red"})
    # Accepted options pass silently.
    get_source("imagenette").check_options("nette", {"size": "160px"})
    get_source("dtd").check_options("dtd", {"partition": 2})
    get_source("image_folder").check_options("mine", {"class_names": {}})
    get_source("synthetic").check_options("syn", SMALL)
    get_source("caltech101").check_options("cal", {})


@pytest.mark.parametrize("name", INDEXED)
def test_missing_files_error_shows_expected_layout(tmp_path, name):
    source = get_source(name)
    assert source.layout
    with pytest.raises(SourceError, match="not found") as err:
        source.index(tmp_path)
    message = str(err.value)
    assert "Expected layout under" in message
    assert source.layout in message
    assert str(tmp_path) in message


def test_missing_single_file_is_named(tmp_path, make_image):
    make_flowers(tmp_path, make_image, labels=[1], trnid=[1], valid=[], tstid=[])
    (tmp_path / "setid.mat").unlink()
    with pytest.raises(SourceError) as err:
        Flowers102().index(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "setid.mat") in message
    assert "imagelabels.mat" in message.split("Expected layout")[1]  # layout, not missing
    assert str(tmp_path / "imagelabels.mat") not in message


# --------------------------------------------------------------------------- remote files


def remote_option_sets(name: str) -> list[dict]:
    if name == "imagenette":
        return [{"size": size} for size in ("full", "320px", "160px")]
    return [{}]


# Publisher files without a published md5 (nothing to check them against).
NO_MD5 = {"Partitions.zip", "UCF101TrainTestSplits-RecognitionTask.zip"}


def check_remote(remote: RemoteFile) -> None:
    assert isinstance(remote, RemoteFile)
    assert remote.provides and not remote.provides.startswith("/")
    if remote.drive_id:  # Google Drive: fetched by id, md5 only where one is known
        assert re.fullmatch(r"[\w-]{25,40}", remote.drive_id), remote.drive_id
        assert remote.url == f"https://drive.google.com/file/d/{remote.drive_id}/view"
        return
    assert re.match(r"https?://[^/\s]+/\S+$", remote.url), remote.url
    assert remote.url.endswith(remote.filename)
    if remote.filename not in NO_MD5:
        assert re.fullmatch(r"[0-9a-f]{32}", remote.md5 or ""), remote.md5


@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_remote_files_are_well_formed(name):
    source = get_source(name)
    for options in remote_option_sets(name):
        remotes = source.remote_files(**options)
        assert remotes
        for remote in remotes:
            check_remote(remote)
        assert len({r.filename for r in remotes}) == len(remotes)


def test_imagenette_remote_file_follows_size():
    (remote,) = Imagenette().remote_files(size="160px")
    assert remote.filename == "imagenette2-160.tgz"
    assert remote.provides == "imagenette2-160"
    assert remote.extract


@pytest.mark.parametrize("name", [n for n in DOWNLOADABLE if n not in ("caltech101", "imagenet")])
def test_is_prepared_once_provided_paths_exist(tmp_path, name):
    source = get_source(name)
    options = {"size": "160px"} if name == "imagenette" else {}
    root = tmp_path / "data"
    assert not source.is_prepared(root, **options)
    root.mkdir()
    assert not source.is_prepared(root, **options)
    remotes = source.remote_files(**options)
    for remote in remotes[:-1]:
        (root / remote.provides).mkdir(parents=True)
    assert source.is_prepared(root, **options) is (len(remotes) == 0)
    last = root / remotes[-1].provides
    last.mkdir(parents=True)
    assert source.is_prepared(root, **options)


def test_caltech101_is_prepared_once_images_are_unpacked(tmp_path):
    # prepare() unpacks the inner tarball and deletes caltech-101/, so readiness is
    # judged by 101_ObjectCategories rather than by the zip's 'provides' path.
    source = Caltech101()
    assert not source.is_prepared(tmp_path / "missing")
    assert not source.is_prepared(tmp_path)
    (tmp_path / "caltech-101").mkdir()
    assert not source.is_prepared(tmp_path)
    (tmp_path / "101_ObjectCategories").mkdir()
    assert source.is_prepared(tmp_path)


def test_image_folder_is_prepared_when_root_is_a_folder(tmp_path):
    assert ImageFolder().remote_files() == []
    assert ImageFolder().is_prepared(tmp_path)
    assert not ImageFolder().is_prepared(tmp_path / "nowhere")


# --------------------------------------------------------------------------- imagenet


def make_imagenet(root: Path, make_image, classnames: list[str]) -> None:
    for rel in ("train/n01440764/n01440764_10026.JPEG", "train/n01440764/n01440764_1.JPEG",
                "train/n04356056/n04356056_3.JPEG", "train/n04355933/n04355933_7.JPEG",
                "val/n01440764/ILSVRC2012_val_00000293.JPEG",
                "val/n04356056/ILSVRC2012_val_00000001.JPEG"):
        make_image(root / "images" / rel)
    write_lines(root / "classnames.txt", classnames)


def test_imagenet_train_and_val_as_test_with_coop_classnames(tmp_path, make_image):
    make_imagenet(tmp_path, make_image, ["n01440764 tench", "n04355933 sunglasses",
                                         "n04356056 sunglasses", "n09999999 unused"])
    frame = ImageNet().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("images/train/n01440764/n01440764_1.JPEG", 0, "tench", "train"),
        ("images/train/n01440764/n01440764_10026.JPEG", 0, "tench", "train"),
        ("images/train/n04355933/n04355933_7.JPEG", 1, "sunglasses (n04355933)", "train"),
        ("images/train/n04356056/n04356056_3.JPEG", 2, "sunglasses (n04356056)", "train"),
        ("images/val/n01440764/ILSVRC2012_val_00000293.JPEG", 0, "tench", "test"),
        ("images/val/n04356056/ILSVRC2012_val_00000001.JPEG", 2, "sunglasses (n04356056)", "test"),
    ]
    assert not (frame["source_split"] == "val").any()  # carved from train by the split step


def test_imagenet_unnamed_class_or_flat_val_fails(tmp_path, make_image):
    make_imagenet(tmp_path, make_image, ["n01440764 tench", "n04356056 sunglasses"])
    with pytest.raises(SourceError, match=r"\['n04355933'\] have no line in"):
        ImageNet().index(tmp_path)
    write_lines(tmp_path / "classnames.txt",
                ["n01440764 tench", "n04355933 sunglass", "n04356056 sunglasses"])
    for folder in list((tmp_path / "images/val").iterdir()):
        for image in folder.iterdir():
            image.rename(tmp_path / "images/val" / image.name)
        folder.rmdir()
    with pytest.raises(SourceError, match="archive is flat; sort its images into <wnid>/"):
        ImageNet().index(tmp_path)


def test_imagenet_is_placed_by_hand(tmp_path, make_image):
    source = ImageNet()
    with pytest.raises(SourceError) as err:
        source.prepare(tmp_path)
    message = str(err.value)
    assert "licence" in message and "image-net.org" in message
    assert str(tmp_path / "images/train") in message and str(tmp_path / "images/val") in message
    assert "classnames.txt" in message
    assert list(tmp_path.iterdir()) == []  # nothing fetched before the images are there
    make_imagenet(tmp_path, make_image, ["n01440764 tench"])
    assert source.is_prepared(tmp_path)
    (tmp_path / "classnames.txt").unlink()
    assert not source.is_prepared(tmp_path)  # prepare would fetch CoOp's classnames.txt
    (remote,) = source.remote_files()
    assert remote.filename == "classnames.txt"
    assert remote.drive_id == "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"


# --------------------------------------------------------------------------- sun397


def test_sun397_partition_lists_and_coop_names(tmp_path, make_image):
    write_lines(tmp_path / "SUN397" / "ClassName.txt",
                ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"])
    write_lines(tmp_path / "Training_01.txt",
                ["/a/abbey/sun_aaa.jpg", "/a/apartment_building/outdoor/sun_bbb.jpg"])
    write_lines(tmp_path / "Testing_01.txt", ["/b/bakery/shop/sun_ccc.jpg"])
    for rel in ("a/abbey/sun_aaa.jpg", "a/apartment_building/outdoor/sun_bbb.jpg",
                "b/bakery/shop/sun_ccc.jpg", "b/bakery/shop/sun_unlisted.jpg"):
        make_image(tmp_path / "SUN397" / rel)
    frame = SUN397().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("SUN397/a/abbey/sun_aaa.jpg", 0, "abbey", "train"),
        ("SUN397/a/apartment_building/outdoor/sun_bbb.jpg", 1,
         "outdoor apartment building", "train"),
        ("SUN397/b/bakery/shop/sun_ccc.jpg", 2, "shop bakery", "test"),
    ]
    write_lines(tmp_path / "Testing_01.txt", ["/z/zoo/sun_x.jpg"])
    with pytest.raises(SourceError, match="'/z/zoo/sun_x.jpg' is in no category"):
        SUN397().index(tmp_path)


# --------------------------------------------------------------------------- stanford cars


def write_car_annos(path: Path, pairs: list[tuple[str, int]]) -> None:
    annos = np.array(pairs, dtype=[("fname", "O"), ("class", "O")]).reshape(1, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": annos})


def make_cars(root: Path, make_image) -> None:
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Tesla Model S Sedan 2012"
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit/cars_meta.mat", {"class_names": names})
    write_car_annos(root / "devkit/cars_train_annos.mat", [("00001.jpg", 2), ("00002.jpg", 1)])
    write_car_annos(root / "cars_test_annos_withlabels.mat", [("00001.jpg", 1)])
    for rel in ("cars_train/00001.jpg", "cars_train/00002.jpg", "cars_test/00001.jpg"):
        make_image(root / rel)


def test_stanford_cars_official_annotations_and_coop_names(tmp_path, make_image):
    make_cars(tmp_path, make_image)
    frame = StanfordCars().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("cars_test/00001.jpg", 0, "2000 AM General Hummer SUV", "test"),
        ("cars_train/00001.jpg", 1, "2012 Tesla Model S Sedan", "train"),
        ("cars_train/00002.jpg", 0, "2000 AM General Hummer SUV", "train"),
    ]
    write_car_annos(tmp_path / "cars_test_annos_withlabels.mat", [("00001.jpg", 3)])
    with pytest.raises(SourceError, match="00001.jpg has class 3; devkit/cars_meta.mat names 1..2"):
        StanfordCars().index(tmp_path)


def test_stanford_cars_is_placed_by_hand(tmp_path, make_image):
    assert StanfordCars().remote_files() == []
    with pytest.raises(SourceError, match="no longer serve the files") as err:
        StanfordCars().prepare(tmp_path)
    assert str(tmp_path / "cars_train") in str(err.value)
    assert "split_zhou_StanfordCars.json" in str(err.value)  # the layout
    make_image(tmp_path / "cars_train" / "00001.jpg")
    make_image(tmp_path / "cars_test" / "00001.jpg")
    assert StanfordCars().is_prepared(tmp_path)
    StanfordCars().prepare(tmp_path)


# --------------------------------------------------------------------------- fgvc aircraft


def test_fgvc_aircraft_official_variant_lists(tmp_path, make_image):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    write_lines(data / "variants.txt", ["707-320", "A300B4", "F/A-18"])
    write_lines(data / "images_variant_train.txt", ["1025794 707-320", "0062781 F/A-18"])
    write_lines(data / "images_variant_val.txt", ["2020012 A300B4"])
    write_lines(data / "images_variant_test.txt", ["1514522 F/A-18"])
    for image_id in ("1025794", "0062781", "2020012", "1514522", "9999999"):
        make_image(data / "images" / f"{image_id}.jpg")
    frame = FGVCAircraft().index(tmp_path)
    check_manifest(frame, tmp_path)
    images = "fgvc-aircraft-2013b/data/images/"
    assert rows(frame) == [
        (images + "0062781.jpg", 2, "F/A-18", "train"),
        (images + "1025794.jpg", 0, "707-320", "train"),
        (images + "1514522.jpg", 2, "F/A-18", "test"),
        (images + "2020012.jpg", 1, "A300B4", "val"),
    ]
    write_lines(data / "images_variant_val.txt", ["2020012 A380"])
    with pytest.raises(SourceError, match="'2020012 A380' names no variant"):
        FGVCAircraft().index(tmp_path)


# --------------------------------------------------------------------------- ucf101


def test_ucf101_official_lists_on_coop_midframes(tmp_path, make_image):
    lists = tmp_path / "ucfTrainTestlist"
    write_lines(lists / "classInd.txt", ["1 ApplyEyeMakeup", "2 YoYo"])
    write_lines(lists / "trainlist01.txt", ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
                                            "YoYo/v_YoYo_g08_c02.avi 2"])
    write_lines(lists / "testlist01.txt", ["YoYo/v_YoYo_g01_c01.avi"])
    for rel in ("Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg", "Yo_Yo/v_YoYo_g08_c02.jpg",
                "Yo_Yo/v_YoYo_g01_c01.jpg"):
        make_image(tmp_path / "UCF-101-midframes" / rel)
    frame = UCF101().index(tmp_path)
    check_manifest(frame, tmp_path)
    assert rows(frame) == [
        ("UCF-101-midframes/Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg", 0,
         "Apply Eye Makeup", "train"),
        ("UCF-101-midframes/Yo_Yo/v_YoYo_g01_c01.jpg", 1, "Yo Yo", "test"),
        ("UCF-101-midframes/Yo_Yo/v_YoYo_g08_c02.jpg", 1, "Yo Yo", "train"),
    ]
    (frames,) = [r for r in UCF101().remote_files() if r.drive_id]
    assert (frames.drive_id, frames.filename) == ("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O",
                                                  "UCF-101-midframes.zip")


# --------------------------------------------------------------------------- CoOp split files

# Per split-file dataset: entries as CoOp's split_zhou_<Name>.json lists them (paths
# relative to the image folder, CoOp's class names), a few per split.
COOP_ENTRIES = {
    "flowers102": [("train", "image_04367.jpg", 0, "pink primrose"),
                   ("val", "image_06736.jpg", 0, "pink primrose"),
                   ("test", "image_06734.jpg", 1, "hard-leaved pocket orchid"),
                   ("train", "image_05142.jpg", 1, "hard-leaved pocket orchid")],
    "eurosat": [("train", "AnnualCrop/AnnualCrop_1.jpg", 0, "Annual Crop Land"),
                ("val", "HerbaceousVegetation/HerbaceousVegetation_9.jpg", 1,
                 "Herbaceous Vegetation Land"),
                ("test", "SeaLake/SeaLake_7.jpg", 2, "Sea or Lake")],
    "dtd": [("train", "banded/banded_0002.jpg", 0, "banded"),
            ("val", "polka-dotted/polka-dotted_0121.jpg", 1, "polka-dotted"),
            ("test", "banded/banded_0004.jpg", 0, "banded")],
    "oxford_pets": [("train", "american_pit_bull_terrier_12.jpg", 1, "american_pit_bull_terrier"),
                    ("val", "Abyssinian_100.jpg", 0, "abyssinian"),
                    ("test", "Abyssinian_101.jpg", 0, "abyssinian")],
    "caltech101": [("train", "Faces/image_0001.jpg", 0, "face"),
                   ("val", "car_side/image_0002.jpg", 1, "car_side"),
                   ("test", "Faces/image_0003.jpg", 0, "face")],
    "food101": [("train", "apple_pie/1005649.jpg", 0, "apple_pie"),
                ("val", "waffles/2.jpg", 1, "waffles"),
                ("test", "apple_pie/101251.jpg", 0, "apple_pie")],
    "sun397": [("train", "a/abbey/sun_aaa.jpg", 0, "abbey"),
               ("val", "a/apartment_building/outdoor/sun_bbb.jpg", 1,
                "outdoor apartment_building"),
               ("test", "a/abbey/sun_ccc.jpg", 0, "abbey")],
    "stanford_cars": [("train", "cars_train/00001.jpg", 0, "2000 AM General Hummer SUV"),
                      ("val", "cars_train/00002.jpg", 1, "2012 Tesla Model S Sedan"),
                      ("test", "cars_test/00001.jpg", 1, "2012 Tesla Model S Sedan")],
    "ucf101": [("train", "Apply_Eye_Makeup/v_ApplyEyeMakeup_g08_c01.jpg", 0, "Apply_Eye_Makeup"),
               ("val", "Yo_Yo/v_YoYo_g08_c02.jpg", 1, "Yo_Yo"),
               ("test", "Yo_Yo/v_YoYo_g01_c01.jpg", 1, "Yo_Yo")],
}


def make_coop_fixture(name: str, root: Path, make_image) -> Path:
    """The images CoOp's split file lists, in the source's layout, an image it does not
    list, the split file itself, and the publisher's other files (which protocol coop
    does not read) present so nothing is downloaded."""
    source = get_source(name)
    data: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, rel, label, class_name in COOP_ENTRIES[name]:
        data[split].append([rel, label, class_name])
        make_image(root / source.image_dir / rel)
    first = Path(COOP_ENTRIES[name][0][1])
    make_image(root / source.image_dir / first.with_name("not_in_split" + first.suffix))
    for remote in source.remote_files():
        (root / remote.provides).mkdir(parents=True, exist_ok=True)
    path = root / source.coop_split.filename
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", sorted(COOP_ENTRIES))
def test_coop_protocol_follows_the_split_file(tmp_path, make_image, name):
    split_file = make_coop_fixture(name, tmp_path, make_image)
    source = get_source(name)
    settings = DatasetSettings.from_params(name, {"source": name, "root": str(tmp_path)})
    assert settings.protocol == "coop" and settings.allow_repeats
    assert settings.split_file_path() == split_file
    assert source.is_prepared(tmp_path)
    frame = source.index_split_file(tmp_path, settings.split_file_path())
    check_manifest(frame, tmp_path)
    prefix = f"{source.image_dir}/" if source.image_dir else ""
    assert set(rows(frame)) == {
        (prefix + rel, label, class_name.replace("_", " "), split)
        for split, rel, label, class_name in COOP_ENTRIES[name]
    }
    assert not frame["path"].str.contains("not_in_split").any()


def test_coop_split_files_are_coops(tmp_path):
    # Google Drive ids from CoOp's DATASETS.md; image folders from its datasets/*.py.
    expected = {
        "flowers102": ("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT", "jpg"),
        "eurosat": ("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o", "2750"),
        "dtd": ("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
                "dtd/images"),
        "oxford_pets": ("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs", "images"),
        "caltech101": ("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
                       "101_ObjectCategories"),
        "food101": ("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
                    "food-101/images"),
        "sun397": ("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", "SUN397"),
        "stanford_cars": ("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT", ""),
        "ucf101": ("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
                   "UCF-101-midframes"),
    }
    for name in SOURCES:
        source = get_source(name)
        assert source.coop_protocol is (name in BENCHMARK), name
        if name in expected:
            remote = source.coop_split
            check_remote(remote)
            assert (remote.filename, remote.drive_id, source.image_dir) == expected[name]
            assert remote.provides == remote.filename and not remote.extract
        else:  # CoOp reads the official lists of these (or they are not CoOp's)
            assert source.coop_split is None, name
    assert FGVCAircraft.image_dir == "fgvc-aircraft-2013b/data/images"
    assert ImageNet.image_dir == "images"


# --------------------------------------------------------------------------- settings


def test_settings_defaults_follow_the_source(tmp_path):
    for name in BENCHMARK:
        settings = DatasetSettings.from_params(name, {"source": name, "root": "data/x"})
        assert (settings.protocol, settings.allow_repeats, settings.split_file) == (
            "coop", True, None), name
        assert settings.root == Path("data/x") and settings.options == {}
    for name in ("imagenette", "cub200", "image_folder", "synthetic"):
        settings = DatasetSettings.from_params(name, {"source": name, "root": "x"})
        assert (settings.protocol, settings.allow_repeats) == ("official", False), name
        assert settings.split_file_path() is None
    # CoOp uses the official lists of these: coop and official read the same files.
    for name in ("fgvc_aircraft", "imagenet"):
        assert DatasetSettings.from_params(name, {"source": name, "root": "x"}
                                           ).split_file_path() is None


def test_settings_official_protocol_reads_the_source_lists(tmp_path):
    settings = DatasetSettings.from_params("flowers", {
        "source": "flowers102", "root": str(tmp_path), "protocol": "official",
        "allow_repeats": False})
    assert settings.split_file_path() is None
    assert not settings.allow_repeats


def test_settings_split_file_overrides_protocol_for_any_source(tmp_path, make_image):
    for rel in ("cat/1.jpg", "cat/2.jpg", "dog/3.jpg", "dog/4.jpg", "dog/5.jpg"):
        make_image(tmp_path / "photos" / rel)
    (tmp_path / "photos" / "lab_split.json").write_text(json.dumps({
        "train": [["cat/1.jpg", 0, "tabby_cat"], ["dog/3.jpg", 1, "dog"]],
        "val": [["dog/4.jpg", 1, "dog"]],
        "test": [["cat/2.jpg", 0, "tabby_cat"]],
    }))
    settings = DatasetSettings.from_params("mine", {
        "source": "image_folder", "root": str(tmp_path / "photos"),
        "split_file": "lab_split.json"})
    assert settings.protocol == "official"
    assert settings.split_file_path() == tmp_path / "photos" / "lab_split.json"
    frame = get_source("image_folder").index_split_file(settings.root, settings.split_file_path())
    assert rows(frame) == [("cat/1.jpg", 0, "tabby cat", "train"),
                           ("cat/2.jpg", 0, "tabby cat", "test"),
                           ("dog/3.jpg", 1, "dog", "train"),
                           ("dog/4.jpg", 1, "dog", "val")]
    # A benchmark source with a lab's file: the file wins over CoOp's.
    absolute = DatasetSettings.from_params("f", {"source": "flowers102", "root": "r",
                                                 "split_file": str(tmp_path / "s.json")})
    assert absolute.split_file_path() == tmp_path / "s.json"
    # protocol coop on a source CoOp never used is fine once a split file is given.
    DatasetSettings.from_params("m", {"source": "image_folder", "root": "r",
                                      "protocol": "coop", "split_file": "s.json"})


@pytest.mark.parametrize(("params", "expected"), [
    ({"source": "flowers102", "root": "r", "protcol": "coop"},
     r"dataset_configs\.flowers\.protcol: unknown key\(s\); a dataset entry takes "
     r"\['source', 'root', 'options', 'protocol', 'split_file', 'allow_repeats'\]"),
    ({"source": "flowers102"}, r"dataset_configs\.flowers needs 'source' and 'root'"),
    ({"source": "flowers102", "root": "r", "protocol": "zhou"},
     r"dataset_configs\.flowers\.protocol must be one of \['coop', 'official'\], got 'zhou'"),
    ({"source": "image_folder", "root": "r", "protocol": "coop"},
     r"dataset_configs\.flowers\.protocol: source 'image_folder' is not one of CoOp's"),
    ({"source": "flowers102", "root": "r", "allow_repeats": "yes"},
     r"dataset_configs\.flowers\.allow_repeats must be true or false, got 'yes'"),
    ({"source": "flowers103", "root": "r"},
     r"dataset_configs\.flowers\.source: Unknown data source 'flowers103'"),
    ({"source": "flowers102", "root": "r", "options": {"colour": "red"}},
     r"dataset_configs\.flowers\.options: source 'flowers102' has no option\(s\) \['colour'\]"),
    ({"source": "flowers102", "root": "r", "options": ["partition"]},
     r"dataset_configs\.flowers\.options must be a mapping"),
    ({"source": "flowers102", "root": 3}, r"dataset_configs\.flowers\.root must be a path"),
])
def test_settings_errors_name_the_parameter(params, expected):
    with pytest.raises(SourceError, match=expected):
        DatasetSettings.from_params("flowers", params)


def test_settings_are_frozen():
    settings = DatasetSettings.from_params("f", {"source": "flowers102", "root": "r"})
    with pytest.raises(AttributeError):
        settings.protocol = "official"
