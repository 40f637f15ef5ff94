"""Fixtures of the core tests."""

from __future__ import annotations

import http.server
import socket
import threading

import pandas as pd
import pytest
import torch

from clip_lora_pipeline.core.sources.synthetic import Synthetic
from tests.core.tiny import fresh_tiny


@pytest.fixture(scope="module")
def inputs():
    """Four random images and three tokenised prompts for the tiny model."""
    _, tokenizer = fresh_tiny()
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), tokenizer(["a photo of a red circle.", "a dog", "x y z"])


def generated_shapes(root, classes: int, per_class: int, size: int) -> pd.DataFrame:
    """The synthetic source's shapes (seed 0) written under ``root``, and their manifest."""
    options = {"num_classes": classes, "images_per_class": per_class, "image_size": size,
               "seed": 0}
    Synthetic().prepare(root, **options)
    return Synthetic().index(root, **options)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The training tests' data: 6 generated shapes, 96 training and 48 validation
    images (paths and labels), and the class names by label."""
    root = tmp_path_factory.mktemp("shapes")
    manifest = generated_shapes(root, 6, 24, 32).sample(frac=1.0, random_state=0)
    train, val = manifest.iloc[:96], manifest.iloc[96:]
    names = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    return {"train": ([str(root / p) for p in train["path"]], train["label"].tolist()),
            "val": ([str(root / p) for p in val["path"]], val["label"].to_numpy()),
            "names": names}


@pytest.fixture(scope="module")
def few_images(tmp_path_factory):
    """(root, the paths of 9 generated shapes in 3 classes)."""
    root = tmp_path_factory.mktemp("shapes")
    return root, generated_shapes(root, 3, 3, 32)[["path"]]


class _FileHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()
    requests: list[str] = []

    def do_GET(self):  # noqa: N802
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    """A real HTTP server on loopback serving ``handler.files`` (path -> bytes); paths in
    ``handler.truncate`` are cut off halfway. Yields (handler, base URL)."""
    _FileHandler.files, _FileHandler.truncate, _FileHandler.requests = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield _FileHandler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
