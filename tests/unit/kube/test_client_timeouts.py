"""vsop.kube.client: a request the API server never answers, or a connection it refuses, ends in a
failed write (`ApiError`, status 0) within REQUEST_TIMEOUT, never a worker thread stuck for ever.
Traffic stays on loopback: a listener of the test's own that accepts and never answers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Iterator

import pytest

from vsop.kube import client
from vsop.kube.client import ApiError, ApiWriter, Connection, ObjectRef


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The URL of a TCP listener on loopback that accepts connections, reads nothing and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_status_patch_nobody_answers_fails_within_the_timeout(silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "REQUEST_TIMEOUT", (1.0, 0.5))
    writer = ApiWriter(Connection.for_url(silent_server), "vsop-test")
    started = time.monotonic()
    with pytest.raises(ApiError) as raised:
        asyncio.run(writer.patch_status(ObjectRef("default", "web"), {"phase": "Programmed"}))
    assert raised.value.status == 0 and "no answer from the API server" in str(raised.value)
    assert time.monotonic() - started < 10  # a PATCH is not retried on a read timeout


def test_a_refused_connection_is_a_failed_write_too() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    writer = ApiWriter(Connection.for_url(f"http://127.0.0.1:{port}"), "vsop-test")
    with pytest.raises(ApiError) as raised:
        asyncio.run(writer.post_event(ObjectRef("default", "web"), "Normal", "Programmed", "on node a"))
    assert raised.value.status == 0
