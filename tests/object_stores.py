"""Filesystems other than the local one, for the tests of ``core.storage`` and what uses
it: fsspec's in-process ``memory://`` always, and an S3 bucket on a local moto server
where moto and s3fs are installed (the ``dev`` extra). ``tests/conftest.py`` loads
these fixtures for every test."""

from __future__ import annotations

import logging
import uuid

import fsspec
import pytest


@pytest.fixture(scope="session")
def s3_endpoint():
    """The URL of a moto S3 server on loopback, for the whole session."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed "
                                        "(pip install -e '.[dev]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[dev]')")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def use_s3_server(monkeypatch, endpoint: str) -> str:
    """Point every ``s3://`` filesystem fsspec makes (kedro-datasets' included) at the
    server, as ``FSSPEC_S3_*`` variables would; a new bucket's URL."""
    monkeypatch.setitem(fsspec.config.conf, "s3", {
        "endpoint_url": endpoint, "key": "testing", "secret": "testing"})
    bucket = f"clip-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}/clip"


@pytest.fixture(params=["memory", "s3"])
def remote_root(request, monkeypatch):
    """A fresh folder URL on a non-local filesystem. ``memory:///`` has three slashes:
    Kedro reads ``memory://a/b`` as host ``a`` and path ``/b``."""
    if request.param == "s3":
        yield use_s3_server(monkeypatch, request.getfixturevalue("s3_endpoint"))
        return
    name = f"/test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}"
    memory = fsspec.filesystem("memory")
    if memory.exists(name):
        memory.rm(name, recursive=True)
