"""A port a connection of this machine just used as its own end cannot take a server for a
minute (TIME_WAIT), and the stack waits for it rather than fail to start PostgreSQL."""

from __future__ import annotations

import socket
import time

from streams.stack.procs import port_bindable


def _server() -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_a_port_a_closed_connection_used_is_not_bindable_and_a_free_one_is() -> None:
    with _server() as server:
        client = socket.create_connection(server.getsockname())
        own_port = client.getsockname()[1]
        accepted, _ = server.accept()
        client.close()  # the client closes first, so its end waits in TIME_WAIT
        deadline = time.monotonic() + 5
        while accepted.recv(1) and time.monotonic() < deadline:
            pass
        accepted.close()
        assert not port_bindable("127.0.0.1", own_port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert port_bindable("127.0.0.1", free_port)


def test_a_port_a_server_listens_on_is_not_bindable() -> None:
    with _server() as server:
        assert not port_bindable("127.0.0.1", server.getsockname()[1])
