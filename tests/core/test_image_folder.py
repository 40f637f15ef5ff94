"""image_folder's options.exclude, and its warning about clutter/background folders."""

from __future__ import annotations

import logging

import pytest

from clip_lora_pipeline.core.sources import SourceError, get_source
from clip_lora_pipeline.core.sources.image_folder import ImageFolder


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_excluded_folders_are_left_out(tmp_path, make_image, caplog):
    for rel in ("airplanes/1.jpg", "BACKGROUND_Google/2.jpg", "watch/3.jpg"):
        make_image(tmp_path / rel)
    with caplog.at_level(logging.WARNING):
        frame = ImageFolder().index(tmp_path, exclude=["BACKGROUND_Google"])
    assert frame["path"].tolist() == ["airplanes/1.jpg", "watch/3.jpg"]
    assert frame["label"].tolist() == [0, 1]
    assert _warnings(caplog) == []


def test_exclude_applies_under_every_split(tmp_path, make_image):
    for rel in ("train/cat/1.jpg", "train/misc/2.jpg", "test/cat/3.jpg", "test/misc/4.jpg",
                "val/misc/5.jpg"):
        make_image(tmp_path / rel)
    frame = ImageFolder().index(tmp_path, exclude=["misc"])
    assert frame["path"].tolist() == ["test/cat/3.jpg", "train/cat/1.jpg"]


def test_unknown_excluded_names_are_warned_about(tmp_path, make_image, caplog):
    make_image(tmp_path / "cat/1.jpg")
    make_image(tmp_path / "dog/2.jpg")
    with caplog.at_level(logging.WARNING):
        frame = ImageFolder().index(tmp_path, exclude=["dog", "BACKGROUND_google", "cats"])
    assert frame["class_name"].tolist() == ["cat"]
    [warning] = _warnings(caplog)
    assert f"image_folder {tmp_path}: options.exclude names folder(s) " in warning
    assert "['BACKGROUND_google', 'cats']" in warning


def test_exclude_must_be_a_list_and_leave_a_class(tmp_path, make_image):
    make_image(tmp_path / "cat/1.jpg")
    with pytest.raises(SourceError, match=r"options\.exclude must be a list"):
        ImageFolder().index(tmp_path, exclude="cat")
    with pytest.raises(SourceError, match="leaves no class folder"):
        ImageFolder().index(tmp_path, exclude=["cat"])


def test_class_names_may_name_an_excluded_folder(tmp_path, make_image):
    make_image(tmp_path / "n01/1.jpg")
    make_image(tmp_path / "n02/2.jpg")
    frame = ImageFolder().index(tmp_path, class_names={"n01": "fox", "n02": "wolf"},
                                exclude=["n02"])
    assert frame["class_name"].tolist() == ["fox"]


def test_exclude_is_an_accepted_option():
    get_source("image_folder").check_options("caltech", {"exclude": ["BACKGROUND_Google"]})


@pytest.mark.parametrize("folder", ["BACKGROUND_Google", "background", "Clutter", "misc",
                                    "other", "Others", "unknown", "NONE", "junk"])
def test_clutter_like_folders_are_warned_about(tmp_path, make_image, caplog, folder):
    make_image(tmp_path / "cat/1.jpg")
    make_image(tmp_path / folder / "2.jpg")
    with caplog.at_level(logging.WARNING):
        ImageFolder().index(tmp_path)
    assert _warnings(caplog) == [
        f"image_folder {tmp_path}: class folder '{folder}' looks like a clutter/background "
        "class; add it to options.exclude if it is not a real class"
    ]


def test_clutter_warning_once_per_folder_and_not_for_real_classes(tmp_path, make_image,
                                                                  caplog):
    for rel in ("train/other/1.jpg", "test/other/2.jpg", "train/background_noise/3.jpg",
                "train/mother/4.jpg", "train/unknown_soldier/5.jpg", "test/nonexistent/6.jpg"):
        make_image(tmp_path / rel)
    with caplog.at_level(logging.WARNING):
        ImageFolder().index(tmp_path)
    flagged = [w.split("'")[1] for w in _warnings(caplog)]
    assert flagged == ["background_noise", "other"]
