"""Everything arbiter listens on is bound to the loopback interface unless an operator
says otherwise: the daemon's HTTP endpoint (health, readiness, metrics) and the local
executor's proxy and replicas.

Checked from the configuration defaults, and on running daemons from the kernel's own
socket tables: every listening TCP socket held by the daemon or a process it started
(found through ``/proc/<pid>/fd`` and ``/proc/net/tcp``, ``tcp6``) has a loopback
local address.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from arbiter.config import Settings
from arbiter.errors import ConfigError
from tests.reliability.site import WEST4, Site, free_port, running, wait_for

LISTEN = "0A"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (tcp) or the 32-hex-digit tcp6 form → (address, port)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        address = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        address = socket.inet_ntop(socket.AF_INET6, words)
    return address, int(port, 16)


def listening() -> dict[int, tuple[str, int]]:
    """Inode → (address, port) of every listening TCP socket on the host."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == LISTEN:
                    found[int(fields[9])] = _address(fields[1])
    return found


def process_tree(*roots: int, marker: str) -> set[int]:
    """``roots``, every process whose command line holds ``marker`` (started detached,
    like the local executor's replicas and nginx), and all their descendants."""
    parents: dict[int, int] = {}
    seeds = set(roots)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker in cmdline:
            seeds.add(int(entry.name))
    tree = set(seeds)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def sockets_of(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket these processes hold."""
    table = listening()
    out = []
    for pid in sorted(pids):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in table:
                    out.append((pid, *table[inode]))
    return out


def assert_loopback(found: list[tuple[int, str, int]]) -> None:
    exposed = [f for f in found if not ipaddress.ip_address(f[1]).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_defaults_bind_the_http_endpoint_and_the_local_proxy_to_loopback() -> None:
    from arbiter.executors.local import LocalOptions

    assert Settings().http.host == "127.0.0.1"
    assert LocalOptions().listen.startswith("127.0.0.1:")
    for wide in ("0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080"):
        with pytest.raises((ConfigError, ValueError)):
            LocalOptions.model_validate({"listen": wide})


@linux_only
def test_a_running_daemon_listens_on_loopback_only(tmp_path: Path) -> None:
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'arbiter.db'}")
    site.write(http="port = 0")  # the default host; an ephemeral port
    with running(site) as daemon:
        serving = wait_for(
            lambda: [e for e in site.events() if e["event"] == "serving"], 30, "the endpoint"
        )
        found = wait_for(
            lambda: sockets_of(process_tree(daemon.pid, marker=str(tmp_path))), 10, "a socket"
        )
    assert_loopback(found)
    assert (daemon.pid, "127.0.0.1", serving[0]["port"]) in found


@linux_only
@pytest.mark.skipif(
    shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx") and not IN_CI,
    reason="nginx is not installed (scripts/test installs it)",
)
@pytest.mark.timeout(120)
def test_a_daemon_running_replicas_behind_the_local_proxy_listens_on_loopback_only(
    tmp_path: Path,
) -> None:
    from arbiter.executors.local import LocalExecutor
    from arbiter.ports import SystemClock

    state = tmp_path / "local"
    proxy = free_port()
    site = Site(tmp_path, f"sqlite:///{tmp_path / 'arbiter.db'}")
    site.write(
        http="port = 0",
        executor=f'kind = "local"\n\n[executor.options]\nstate_dir = "{state}"\n'
        f'listen = "127.0.0.1:{proxy}"\nwarmup_seconds = 0.5\n',
    )
    try:
        with running(site) as daemon:
            wait_for(lambda: site.placements() == {WEST4: 2}, 60, "two replicas placed")
            found = sockets_of(process_tree(daemon.pid, marker=str(tmp_path)))
        ports = {port for _, _, port in found}
        assert proxy in ports, found  # nginx
        assert len(found) >= 4, found  # the endpoint, nginx and both replicas
        assert_loopback(found)
    finally:
        LocalExecutor(
            SystemClock(), {"state_dir": str(state), "listen": f"127.0.0.1:{proxy}"}
        ).stop_all()
