"""Shared fixtures. Every test runs without network: a connection to anything but
loopback fails the test."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

# remote_root: a folder on fsspec's memory:// and, with moto installed, on a local S3
pytest_plugins = ["tests.object_stores"]


class NetworkAccessError(AssertionError):
    """A test tried to reach the network."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(method):
        def connect(self, address, *args):
            if not _is_local(address):
                raise NetworkAccessError(f"test tried to open a network connection to {address}")
            return method(self, address, *args)
        return connect

    def no_lookup(host, *args, **kwargs):
        if host in (None, "localhost") or _is_local((host,)):
            return real_getaddrinfo(host, *args, **kwargs)
        raise NetworkAccessError(f"test tried to resolve {host!r}")

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)


def write_image(path: Path, size=(24, 20), mode="RGB", fmt=None, seed=0) -> Path:
    """A small random image in any PIL mode and format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


@pytest.fixture
def make_image():
    return write_image


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_kedro(project: Path, *args: str, env: dict[str, str] | None = None):
    """``kedro <args>`` in ``project``; fails the test with the output's tail."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "kedro", *args], cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", **(env or {})},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def copy_project(copy: Path) -> Path:
    """The project's code and configuration (no conf/local, no data) under ``copy``."""
    import shutil

    shutil.copytree(PROJECT_ROOT / "conf", copy / "conf", ignore=shutil.ignore_patterns("local"))
    (copy / "conf" / "local").mkdir()
    for folder in ("src", "notebooks"):
        shutil.copytree(PROJECT_ROOT / folder, copy / folder,
                        ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "data").mkdir()
    return copy


# The smoke environment's adaptation entries (name -> entry), in their order: every one is
# trained, evaluated, exported and reported by a smoke run.
SMOKE_ADAPTATIONS: dict = yaml.safe_load(
    (PROJECT_ROOT / "conf/smoke/parameters_lora.yml").read_text())["adaptation_methods"]
SMOKE_OUTPUT = "smoke_run_output.txt"  # what `kedro run --env smoke` printed, in the copy


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory) -> Path:
    """A temporary copy of the project after ``kedro run --env smoke``. Shared by the
    end-to-end tests, which read its outputs or re-run parts of it; what the run printed
    (stdout and stderr) is in its ``SMOKE_OUTPUT``."""
    copy = copy_project(tmp_path_factory.mktemp("project"))
    result = run_kedro(copy, "run", "--env", "smoke")
    (copy / SMOKE_OUTPUT).write_text(result.stdout + result.stderr)
    return copy


def synthetic_pools(root: Path, images_per_class: int, num_classes: int = 5,
                    image_size: int = 32, fractions=(0.5, 0.25, 0.25)):
    """A generated dataset of shapes under ``root`` run through the data nodes up to the
    split: (dataset params, manifest, train_pool, val_pool, test)."""
    from clip_lora_pipeline.core.models import register_model_configs
    from clip_lora_pipeline.pipelines.data.nodes import download, split, validate

    register_model_configs()
    dataset = {"source": "synthetic", "root": str(root),
               "options": {"num_classes": num_classes, "images_per_class": images_per_class,
                           "image_size": image_size}}
    manifest = download(dataset, {})
    images, _ = validate(manifest, dataset, {})
    train_pool, val_pool, test = split(images, {
        "seed": 0, "fractions": dict(zip(("train", "val", "test"), fractions)),
        "val_fraction_of_train": 0.2})
    return dataset, manifest, train_pool, val_pool, test


def synthetic_splits(root: Path, images_per_class: int, shots: int):
    """A 5-class synthetic dataset under ``root`` run through the data nodes:
    (dataset params, manifest, train, val, test)."""
    from clip_lora_pipeline.pipelines.data.nodes import few_shot

    dataset, manifest, train_pool, val_pool, test = synthetic_pools(root, images_per_class)
    train, val = few_shot(train_pool, val_pool, test, shots, 2, 1)
    return dataset, manifest, train, val, test
