"""Download: temp name + rename, md5 check, skip what is present, fail fast offline.

A real HTTP server on loopback stands in for the publisher.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from clip_lora_pipeline.core.download import (
    DownloadError,
    RemoteFile,
    download_file,
    extract_archive,
    fetch,
)


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_md5_and_renames(file_server, tmp_path):
    handler, base = file_server
    handler.files["/a.bin"] = b"x" * 5000
    remote = RemoteFile(base + "/a.bin", "a.bin", "a.bin", md5=_md5(b"x" * 5000))
    path = download_file(remote, tmp_path)
    assert path.read_bytes() == b"x" * 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_wrong_md5_keeps_nothing(file_server, tmp_path):
    handler, base = file_server
    handler.files["/a.bin"] = b"tampered"
    remote = RemoteFile(base + "/a.bin", "a.bin", "a.bin", md5=_md5(b"original"))
    with pytest.raises(DownloadError, match="md5"):
        download_file(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_leaves_no_file_that_looks_complete(file_server, tmp_path):
    handler, base = file_server
    handler.files["/big.bin"] = b"y" * 200_000
    handler.truncate.add("/big.bin")
    remote = RemoteFile(base + "/big.bin", "big.bin", "big.bin")  # no md5 published
    with pytest.raises(DownloadError):
        download_file(remote, tmp_path)
    assert not (tmp_path / "big.bin").exists()
    assert not (tmp_path / "big.bin.part").exists()


def test_file_already_present_is_not_downloaded_again(file_server, tmp_path):
    handler, base = file_server
    handler.files["/a.bin"] = b"abc"
    (tmp_path / "a.bin").write_bytes(b"abc")
    download_file(RemoteFile(base + "/a.bin", "a.bin", "a.bin", md5=_md5(b"abc")), tmp_path)
    assert handler.requests == []


def test_corrupt_local_copy_is_replaced(file_server, tmp_path):
    handler, base = file_server
    handler.files["/a.bin"] = b"abc"
    (tmp_path / "a.bin").write_bytes(b"ab")
    download_file(RemoteFile(base + "/a.bin", "a.bin", "a.bin", md5=_md5(b"abc")), tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert handler.requests == ["/a.bin"]


def test_fetch_extracts_archives_and_skips_what_is_there(file_server, tmp_path):
    handler, base = file_server
    archive = _tgz({"jpg/image_00001.jpg": b"1", "jpg/image_00002.jpg": b"2"})
    handler.files["/imgs.tgz"] = archive
    handler.files["/labels.mat"] = b"labels"
    files = [
        RemoteFile(base + "/imgs.tgz", "imgs.tgz", "jpg", md5=_md5(archive), extract=True),
        RemoteFile(base + "/labels.mat", "labels.mat", "labels.mat", md5=_md5(b"labels")),
    ]
    fetch(files, tmp_path)
    assert (tmp_path / "jpg/image_00002.jpg").read_bytes() == b"2"
    assert not (tmp_path / "imgs.tgz").exists()  # archive removed once unpacked
    assert sorted(handler.requests) == ["/imgs.tgz", "/labels.mat"]

    (tmp_path / "labels.mat").unlink()
    fetch(files, tmp_path)
    assert sorted(handler.requests) == ["/imgs.tgz", "/labels.mat", "/labels.mat"]


def test_unreachable_host_fails_fast_naming_url_and_manual_path(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/102flowers.tgz"
    remote = RemoteFile(url, "102flowers.tgz", "jpg", md5="0" * 32, extract=True)
    with pytest.raises(DownloadError) as error:
        fetch([remote], tmp_path / "flowers102", timeout=2)
    message = str(error.value)
    assert url in message
    assert str(tmp_path / "flowers102" / "102flowers.tgz") in message
    assert not (tmp_path / "flowers102" / "102flowers.tgz.part").exists()


def test_extract_zip_and_reject_unknown_format(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("2750/Forest/Forest_1.jpg", b"f")
    archive = tmp_path / "EuroSAT.zip"
    archive.write_bytes(buffer.getvalue())
    placed = extract_archive(archive, tmp_path / "out")
    assert placed == [tmp_path / "out" / "2750"]
    assert (tmp_path / "out/2750/Forest/Forest_1.jpg").read_bytes() == b"f"
    odd = tmp_path / "data.rar"
    odd.write_bytes(b"?")
    with pytest.raises(DownloadError, match="unpack"):
        extract_archive(odd, tmp_path / "out")


def test_tar_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.tgz"
    archive.write_bytes(_tgz({"../escaped.txt": b"x"}))
    with pytest.raises(tarfile.TarError):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_real_sources_point_at_public_urls_with_checksums():
    from clip_lora_pipeline.core.sources import SOURCES

    for source in SOURCES.values():
        for remote in source.remote_files():
            assert remote.url.startswith(("https://", "http://")), remote
            assert remote.md5 is None or len(remote.md5) == 32
            assert Path(remote.provides).parts[0] != ".."


# --------------------------------------------------------------------------- Google Drive


@pytest.fixture
def fake_drive(monkeypatch):
    """gdown.download replaced by a stand-in that writes ``files[id]`` into the open
    file it is given, recording each call."""
    import gdown

    files: dict[str, bytes] = {}
    calls: list[dict] = []

    def download(*, id, output, **kwargs):
        calls.append({"id": id, **kwargs})
        if id not in files:
            raise gdown.exceptions.FileURLRetrievalError(f"no file {id}")
        output.write(files[id])
        return output

    monkeypatch.setattr(gdown, "download", download)
    return files, calls


def test_drive_file_goes_through_part_md5_and_rename(fake_drive, tmp_path):
    files, calls = fake_drive
    files["abc123"] = b'{"train": []}'
    remote = RemoteFile.google_drive("abc123", "split_zhou_X.json", md5=_md5(b'{"train": []}'))
    assert remote.url == "https://drive.google.com/file/d/abc123/view"
    assert remote.provides == "split_zhou_X.json"
    path = download_file(remote, tmp_path, timeout=7)
    assert path.read_bytes() == b'{"train": []}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split_zhou_X.json"]
    assert calls[0]["id"] == "abc123" and calls[0]["timeout"] == 7
    # Present and verified: not fetched again.
    download_file(remote, tmp_path)
    assert len(calls) == 1


def test_drive_file_with_wrong_md5_keeps_nothing(fake_drive, tmp_path):
    files, _ = fake_drive
    files["abc123"] = b"an html error page"
    remote = RemoteFile.google_drive("abc123", "frames.zip", md5=_md5(b"the zip"))
    with pytest.raises(DownloadError, match="md5"):
        download_file(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_drive_archive_is_extracted_by_fetch(fake_drive, tmp_path):
    files, _ = fake_drive
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("UCF-101-midframes/Apply_Eye_Makeup/v_1.jpg", b"j")
    files["zipid"] = buffer.getvalue()
    fetch([RemoteFile.google_drive("zipid", "UCF-101-midframes.zip", "UCF-101-midframes",
                                   extract=True)], tmp_path)
    assert (tmp_path / "UCF-101-midframes/Apply_Eye_Makeup/v_1.jpg").read_bytes() == b"j"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UCF-101-midframes"]


def test_drive_failure_names_the_file_and_where_to_put_it(fake_drive, tmp_path):
    remote = RemoteFile.google_drive("missing", "split_zhou_X.json")
    with pytest.raises(DownloadError) as error:
        download_file(remote, tmp_path / "x")
    message = str(error.value)
    assert "split_zhou_X.json" in message and remote.url in message
    assert str(tmp_path / "x" / "split_zhou_X.json") in message
    assert list((tmp_path / "x").iterdir()) == []


def test_drive_offline_fails_fast(tmp_path):
    # The real gdown against the test network guard: no connection may be opened.
    import time

    remote = RemoteFile.google_drive("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
                                     "split_zhou_OxfordFlowers.json")
    started = time.monotonic()
    with pytest.raises(DownloadError) as error:
        fetch([remote], tmp_path / "flowers102", timeout=2)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "Without network access" in message
    assert "https://drive.google.com/file/d/1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT/view" in message
    assert str(tmp_path / "flowers102" / "split_zhou_OxfordFlowers.json") in message
    assert "test tried to resolve 'drive.google.com'" in message  # the guard's refusal
    assert list((tmp_path / "flowers102").iterdir()) == []
