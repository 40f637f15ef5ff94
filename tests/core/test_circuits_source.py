"""The low-resource benchmark's circuit diagrams: fixtures in the layouts the paper's code
reads (github.com/xiaobai1217/Low-Resource-Vision), and figshare's API on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clip_lora_pipeline.core.dataset_settings import DatasetSettings
from clip_lora_pipeline.core.download import DownloadError
from clip_lora_pipeline.core.figshare import article_files, files_url
from clip_lora_pipeline.core.prompts import templates_for
from clip_lora_pipeline.core.sources import SourceError, get_source
from clip_lora_pipeline.core.sources.circuits import ARTICLE_ID, RECORD_PAGE, Circuits
from clip_lora_pipeline.pipelines.data.nodes import download
from tests.conftest import PROJECT_ROOT

LABEL_MAP = ["0,voltage_divider", "1,full-wave rectifier", "2,common-emitter amplifier"]
# <id>,<image path under circuits/data/>,<label>, as dataloader_circuit.py reads them.
LISTS = {
    "train": ["101,101.png,0", "102,102.png,1", "103,amplifiers/103.png,2"],
    "val": ["201,201.png,0"],
    "test": ["301,301.png,1", "302,amplifiers/302.png,2"],
}


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def make_circuits(root: Path, make_image, lists=LISTS, label_map=LABEL_MAP) -> None:
    """The dataloaders' layout: circuits/{split}_5_shots.csv and label_map.csv without
    header rows, images under circuits/data/."""
    write_lines(root / "circuits/label_map.csv", label_map)
    for split, rows in lists.items():
        write_lines(root / f"circuits/{split}_5_shots.csv", rows)
        for row in rows:
            make_image(root / "circuits/data" / row.split(",")[1])


def rows(frame: pd.DataFrame) -> list[tuple]:
    return [(r.path, int(r.label), r.class_name, r.source_split)
            for r in frame.itertuples(index=False)]


def test_reads_the_dataloaders_layout_with_its_splits(tmp_path, make_image):
    make_circuits(tmp_path, make_image)
    frame = Circuits().index(tmp_path)
    assert rows(frame) == [
        ("circuits/data/101.png", 0, "voltage divider", "train"),
        ("circuits/data/102.png", 1, "full-wave rectifier", "train"),
        ("circuits/data/201.png", 0, "voltage divider", "val"),
        ("circuits/data/301.png", 1, "full-wave rectifier", "test"),
        ("circuits/data/amplifiers/103.png", 2, "common-emitter amplifier", "train"),
        ("circuits/data/amplifiers/302.png", 2, "common-emitter amplifier", "test"),
    ]
    assert all((tmp_path / p).is_file() for p in frame["path"])
    assert Circuits().is_prepared(tmp_path)


def test_reads_img2img_naming_with_header_rows_one_folder_down(tmp_path, make_image):
    # img2img_circuit.py: circuit-diagrams/{split}.csv and label_map.csv after a header
    # row; here inside an archive's top folder, images beside the lists, labels from 1.
    folder = tmp_path / "LITE/circuit-diagrams"
    write_lines(folder / "label_map.csv", ["label,name", "1,band-pass filter", "2,oscillator"])
    write_lines(folder / "train.csv", ["id,path,label", "7,img/7.jpg,2", "8,img/8.jpg,1"])
    write_lines(folder / "test.csv", ["id,path,label", "9,img/9.jpg,1"])
    for name in ("7", "8", "9"):
        make_image(folder / f"img/{name}.jpg")
    assert Circuits().is_prepared(tmp_path)
    assert rows(Circuits().index(tmp_path)) == [
        ("LITE/circuit-diagrams/img/7.jpg", 1, "oscillator", "train"),
        ("LITE/circuit-diagrams/img/8.jpg", 0, "band-pass filter", "train"),
        ("LITE/circuit-diagrams/img/9.jpg", 0, "band-pass filter", "test"),
    ]


def test_without_a_val_list_val_is_left_to_the_split_step(tmp_path, make_image):
    make_circuits(tmp_path, make_image, lists={k: v for k, v in LISTS.items() if k != "val"})
    frame = Circuits().index(tmp_path)
    assert set(frame["source_split"]) == {"train", "test"}
    assert len(frame) == 5


def test_missing_files_name_the_file_and_show_the_layout(tmp_path, make_image):
    source = Circuits()
    assert not source.is_prepared(tmp_path)
    with pytest.raises(SourceError, match="not found") as err:
        source.index(tmp_path)
    assert str(tmp_path / "circuits/label_map.csv") in str(err.value)
    assert f"Expected layout under {tmp_path}:\n{source.layout}" in str(err.value)
    make_circuits(tmp_path, make_image)
    (tmp_path / "circuits/test_5_shots.csv").unlink()
    assert not source.is_prepared(tmp_path)
    with pytest.raises(SourceError, match="test_5_shots.csv"):
        source.index(tmp_path)


@pytest.mark.parametrize(("train_rows", "expected"), [
    (["101,101.png,0", "102,102.png,5"], r"train_5_shots\.csv, line 2: label 5 is not in .*label_map"),
    (["101,101.png,0", "102,../../etc/x.png,1"], r"line 2: image path '\.\./\.\./etc/x\.png' must be"),
    (["101,101.png,0", "102,102.png,one"], r"train_5_shots\.csv, line 2: expected 3 .*integer label"),
    (["101,101.png,0", "101,101.png,0"], r"line 2: 101\.png is listed again \(first in train_5_shots"),
])
def test_bad_rows_name_file_and_line(tmp_path, make_image, train_rows, expected):
    make_circuits(tmp_path, make_image, lists={**LISTS, "train": train_rows})
    with pytest.raises(SourceError, match=expected):
        Circuits().index(tmp_path)


def test_images_outside_every_candidate_folder_fail_with_where_they_were_looked_for(
        tmp_path, make_image):
    make_circuits(tmp_path, make_image)
    (tmp_path / "circuits/data/101.png").unlink()
    with pytest.raises(SourceError, match=r"101\.png \(the first image .* is in none of"):
        Circuits().index(tmp_path)


def test_configured_with_its_own_split_and_the_papers_prompt():
    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters.yml").read_text())
    settings = DatasetSettings.from_params("circuits", params["dataset_configs"]["circuits"])
    assert (settings.source, settings.protocol, settings.split_file_path()) == (
        "circuits", "official", None)
    assert settings.root == Path("${globals:data_root}/01_raw/low_resource")  # under data_root
    assert templates_for("dataset", "circuits") == ["a circuit diagram of {}"]


# --------------------------------------------------------------------------- figshare


@pytest.fixture
def figshare_server(file_server, monkeypatch):
    """The loopback file server standing in for figshare's API and its downloads."""
    monkeypatch.setattr(Circuits, "figshare_api", file_server[1])
    return file_server


def zipped_fixture(tmp_path: Path, make_image) -> bytes:
    made = tmp_path / "made"
    make_circuits(made, make_image)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(made.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(made).as_posix())
    return buffer.getvalue()


def publish(handler, base: str, files: dict[str, bytes]) -> None:
    """Serve ``files`` as figshare record ARTICLE_ID: the API's listing and each file."""
    listing = []
    for number, (name, body) in enumerate(files.items(), start=1):
        handler.files[f"/files/{number}"] = body
        listing.append({"id": number, "name": name, "size": len(body), "is_link_only": False,
                        "download_url": f"{base}/files/{number}", "supplied_md5": "",
                        "computed_md5": hashlib.md5(body).hexdigest(), "mimetype": ""})
    handler.files[files_url(ARTICLE_ID, "")] = json.dumps(listing).encode()


def test_prepare_lists_the_record_and_fetches_only_the_circuits_archive(
        tmp_path, make_image, figshare_server):
    handler, base = figshare_server
    publish(handler, base, {"historic-maps.zip": b"maps", "circuits.zip":
                            zipped_fixture(tmp_path, make_image),
                            "mechanical-drawing.zip": b"drawings"})
    root = tmp_path / "data/circuits"
    source = get_source("circuits")
    source.prepare(root, timeout=5)
    assert handler.requests == [files_url(ARTICLE_ID, ""), "/files/2"]
    assert not (root / "circuits.zip").exists()  # unpacked, then removed
    assert source.is_prepared(root)
    assert len(source.index(root)) == 6
    source.prepare(root, timeout=5)  # already there: nothing is asked for
    assert len(handler.requests) == 2


def test_the_data_node_downloads_and_indexes_the_official_split(
        tmp_path, make_image, figshare_server):
    handler, base = figshare_server
    publish(handler, base, {"circuits.zip": zipped_fixture(tmp_path, make_image)})
    manifest = download({"source": "circuits", "root": str(tmp_path / "c")}, {"timeout": 5})
    assert manifest["source_split"].value_counts().to_dict() == {"train": 3, "test": 2, "val": 1}


def test_a_corrupt_archive_is_not_kept(tmp_path, make_image, figshare_server):
    handler, base = figshare_server
    publish(handler, base, {"circuits.zip": zipped_fixture(tmp_path, make_image)})
    handler.files["/files/1"] = b"truncated"
    root = tmp_path / "c"
    with pytest.raises(DownloadError, match="md5") as err:
        Circuits().prepare(root, timeout=5)
    assert RECORD_PAGE in str(err.value)
    assert list(root.iterdir()) == []


def test_a_record_without_a_circuits_file_names_what_it_lists(tmp_path, figshare_server):
    handler, base = figshare_server
    publish(handler, base, {"historic-maps.zip": b"m", "mechanical-drawing.zip": b"d"})
    with pytest.raises(DownloadError, match=r"lists \['historic-maps\.zip', 'mechanical-drawi"):
        Circuits().prepare(tmp_path / "c", timeout=5)


def test_article_files_reads_figshares_fields(figshare_server):
    handler, base = figshare_server
    publish(handler, base, {"circuits.zip": b"z", "README.txt": b"r"})
    circuits, readme = article_files(ARTICLE_ID, timeout=5, api=base)
    assert (circuits.url, circuits.filename, circuits.md5, circuits.extract) == (
        f"{base}/files/1", "circuits.zip", hashlib.md5(b"z").hexdigest(), True)
    assert (readme.filename, readme.extract) == ("README.txt", False)


def test_offline_fails_fast_with_the_manual_placement_advice(tmp_path, monkeypatch):
    def offline(host, *args, **kwargs):  # what a machine without network answers
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    root = tmp_path / "data/01_raw/circuits"
    started = time.monotonic()
    with pytest.raises(DownloadError) as err:
        Circuits().prepare(root, timeout=30)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "https://api.figshare.com/v2/articles/25577145/files" in message
    assert "Temporary failure in name resolution" in message
    assert RECORD_PAGE in message
    assert f"unpack its circuit diagrams into {root}" in message
    assert str(root / "circuits/label_map.csv") in message
    assert Circuits.layout in message
    assert not root.exists() or list(root.iterdir()) == []
