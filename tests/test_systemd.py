"""The sd_notify protocol, against an emulated notify socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from arbiter.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    yield path, server
    server.close()


def received(server: socket.socket) -> dict[str, str]:
    data = server.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_and_status_reach_the_socket(notify_socket: tuple[str, socket.socket]) -> None:
    path, server = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("polling 2 sources")
    assert received(server) == {"READY": "1", "STATUS": "polling 2 sources"}


def test_watchdog_interval_comes_from_watchdog_usec(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, server = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
    assert notifier.watchdog_seconds == 20
    notifier.watchdog()
    assert received(server) == {"WATCHDOG": "1"}


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    notifier = Notifier(
        {
            "NOTIFY_SOCKET": str(tmp_path / "x"),
            "WATCHDOG_USEC": "1000000",
            "WATCHDOG_PID": str(os.getpid() + 1),
        }
    )
    assert notifier.watchdog_seconds is None


def test_the_abstract_namespace_is_supported() -> None:
    name = f"arbiter-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert received(server) == {"STOPPING": "1", "STATUS": "stopping"}
    finally:
        server.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready("x")
