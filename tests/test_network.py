import socket

import pytest


def test_no_network():
    with pytest.raises(OSError, match="tests never touch the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1, never routed
