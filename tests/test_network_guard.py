import socket
import urllib.request

import pytest

from tests.conftest import NetworkAccessError


def test_outside_connection_fails_the_test():
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_name_lookup_fails_the_test():
    with pytest.raises(NetworkAccessError):
        urllib.request.urlopen("https://huggingface.co", timeout=1)


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
