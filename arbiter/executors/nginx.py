"""The local executor's reverse proxy: one private nginx, its config rendered from the
executor's state and applied with a graceful reload.

Rendering is pure (:func:`render_config`): routes in, config text out. :class:`Nginx`
is the shell around the ``nginx`` binary: it starts the private instance (its own
prefix, config, pid file, error log and temp directories, all in the executor's
state directory; run as the current user, never the system service), checks a new
config with ``nginx -t``, applies it with ``nginx -s reload`` (new workers take new
connections, old workers finish the requests they hold) and waits until the new
config answers, and stops it.

Every workload is a location ``/w/<workload>/`` proxied to an upstream whose servers
are its groups' replicas, the group's weight split evenly across its replicas.
``proxy_next_upstream`` passes a request that meets a refused or reset connection
(a replica that is stopping) or a 503 (a replica still warming up) to another
server, so moving weight and releasing a group drops nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from arbiter.errors import ExecutorError

NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
GENERATION_PATH = "/_arbiter/config"
"""Answers the generation of the config a worker runs; how a reload is confirmed."""
INSTALL_HINT = (
    "nginx is needed by the local executor and was not found; install Debian's package "
    "(`sudo apt-get install nginx-light`, or `nginx`) or set executor.options.nginx to "
    "its path. arbiter runs its own instance on 127.0.0.1; the system service is not used."
)


# -- processes ------------------------------------------------------------------------


def is_running(pid: int, *, cmdline_contains: Sequence[str] = ()) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line holds every
    string in ``cmdline_contains`` (a guard against a recycled pid). Reaps ``pid``
    when it is an exited child of this process. Without /proc only liveness is known."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's: the command line check below decides
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return all(part in cmdline for part in cmdline_contains)


def wait_gone(pids: Sequence[int], timeout: float, *, probe: float = 0.02) -> list[int]:
    """Wait until every pid has exited (or ``timeout``); return those still running."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if is_running(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(probe)
        left = [pid for pid in left if is_running(pid)]
    return left


def signal_quietly(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def find_nginx(configured: str | None = None) -> str:
    """The nginx binary: the configured path, else ``nginx`` on PATH, else /usr/sbin."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise ExecutorError(
                f"executor.options.nginx: {configured!r} is not an executable; {INSTALL_HINT}",
                executor="local",
            )
        return found
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in NGINX_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ExecutorError(INSTALL_HINT, executor="local")


# -- config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedGroup:
    """One replica group as the proxy sees it: its weight and its replicas' ports."""

    group_id: str
    weight: int
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Route:
    """One workload's location: its groups, weighted (weight 0 groups are left out)."""

    workload: str
    groups: tuple[WeightedGroup, ...]


def server_weights(groups: Sequence[WeightedGroup]) -> list[tuple[str, int, int]]:
    """``(group_id, port, weight)`` per replica, each group's weight split evenly over
    its replicas in integers: every server gets ``weight * L / n`` where ``L`` is the
    least common multiple of the groups' replica counts, so the groups' shares are
    exactly their weights. Groups with weight 0 or no replicas are left out."""
    kept = [g for g in groups if g.weight > 0 and g.ports]
    if not kept:
        return []
    scale = math.lcm(*(len(g.ports) for g in kept))
    divisor = math.gcd(*(g.weight * scale // len(g.ports) for g in kept))
    return [
        (g.group_id, port, g.weight * scale // len(g.ports) // divisor)
        for g in kept
        for port in g.ports
    ]


def upstream_name(workload: str) -> str:
    return "arbiter_w_" + workload.replace("-", "_")


@dataclass(frozen=True)
class NginxPaths:
    """Where the private instance keeps everything (all inside ``directory``)."""

    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def pid(self) -> Path:
        return self.directory / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def temp(self) -> Path:
        return self.directory / "temp"


def render_config(
    routes: Sequence[Route],
    *,
    paths: NginxPaths,
    listen: tuple[str, int],
    user: tuple[str, str] | None = None,
    access_log: bool = False,
) -> tuple[str, str]:
    """The nginx config for ``routes`` and its generation (a hash of the text).

    ``user`` is set only when nginx starts as root (workers then run as that user
    and group instead of nobody); otherwise workers run as whoever started nginx.
    """
    host, port = listen
    t = paths.temp
    lines = [
        "# Rendered by arbiter's local executor from its state; rewritten on every change.",
        *([f"user {user[0]} {user[1]};"] if user else []),
        "daemon on;",
        "worker_processes 1;",
        f"pid {paths.pid};",
        f"lock_file {paths.directory / 'nginx.lock'};",
        f"error_log {paths.error_log} notice;",
        "events { worker_connections 1024; }",
        "http {",
        (
            '    log_format arbiter \'$time_iso8601 "$request" $status '
            "upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';"
        ),
        f"    access_log {paths.access_log} arbiter;" if access_log else "    access_log off;",
        f"    client_body_temp_path {t / 'client_body'};",
        f"    proxy_temp_path {t / 'proxy'};",
        f"    fastcgi_temp_path {t / 'fastcgi'};",
        f"    uwsgi_temp_path {t / 'uwsgi'};",
        f"    scgi_temp_path {t / 'scgi'};",
        "    server_tokens off;",
        "    default_type text/plain;",
        "    proxy_connect_timeout 2s;",
        "    proxy_send_timeout 60s;",
        "    proxy_read_timeout 300s;",
        # A replica that refuses or resets the connection (stopping) or answers 503
        # (warming up) has not run the request: pass it to another server. Inference
        # requests have no side effects, so POSTs are retried too.
        "    proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
        "    proxy_next_upstream_timeout 30s;",
        "    proxy_set_header Host $host;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ]
    locations: list[str] = []
    for route in sorted(routes, key=lambda r: r.workload):
        servers = server_weights(route.groups)
        prefix = f"/w/{route.workload}/"
        if not servers:
            locations += [
                f"        location {prefix} {{",
                f'            return 503 "workload {route.workload}: no replicas have weight\\n";',
                "        }",
            ]
            continue
        name = upstream_name(route.workload)
        lines.append(f"    upstream {name} {{")
        for group in route.groups:
            lines.append(
                f"        # {group.group_id}: weight {group.weight}, {len(group.ports)} replica(s)"
            )
        for _, server_port, weight in servers:
            lines.append(
                f"        server 127.0.0.1:{server_port} weight={weight}"
                " max_fails=1 fail_timeout=2s;"
            )
        lines.append("    }")
        locations += [
            f"        location {prefix} {{",
            f"            proxy_pass http://{name}/;",
            "            add_header X-Arbiter-Upstream $upstream_addr always;",
            "        }",
        ]
    body = "\n".join(
        [
            *lines,
            "    server {",
            f"        listen {host}:{port};",
            "        server_name _;",
            *locations,
            "        location / {",
            '            return 404 "no such workload; try /w/<workload>/\\n";',
            "        }",
        ]
    )
    generation = hashlib.sha256(body.encode()).hexdigest()[:16]
    text = "\n".join(
        [
            body,
            f"        location = {GENERATION_PATH} {{",
            "            access_log off;",
            f'            return 200 "{generation}\\n";',
            "        }",
            "    }",
            "}",
            "",
        ]
    )
    return text, generation


# -- the instance -------------------------------------------------------------------


class Nginx:
    """The executor's private nginx instance (adopted across daemon restarts through
    its pid file)."""

    def __init__(self, binary: str, directory: Path, listen: tuple[str, int]) -> None:
        self.binary = binary
        self.paths = NginxPaths(directory)
        self.listen = listen

    def _args(self, conf: Path | None = None) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.paths.directory}/",
            "-c",
            str(conf or self.paths.conf),
            "-e",
            str(self.paths.error_log),
        ]

    def master_pid(self) -> int | None:
        """The running master's pid, or None (no pid file, or a stale one)."""
        try:
            pid = int(self.paths.pid.read_text().strip())
        except (OSError, ValueError):
            return None
        # The master's title is "nginx: master process <binary> -p <dir>/ -c <conf> ...".
        return pid if is_running(pid, cmdline_contains=("nginx", str(self.paths.conf))) else None

    def apply(self, config: str, generation: str, *, timeout: float = 10.0) -> bool:
        """Run ``config``: start nginx when it is not running, reload it when its config
        differs, and wait until a worker answers with ``generation``. Returns whether
        anything changed."""
        pid = self.master_pid()
        current = self.paths.conf.read_text() if self.paths.conf.exists() else None
        if pid is not None and current == config:
            return False
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.paths.temp / sub).mkdir(parents=True, exist_ok=True)
        candidate = self.paths.conf.with_name("nginx.conf.new")
        candidate.write_text(config)
        self._run([*self._args(candidate), "-t", "-q"], "check the new config")
        os.replace(candidate, self.paths.conf)
        if pid is None:
            self._run(self._args(), f"start on {self.listen[0]}:{self.listen[1]}")
        else:
            self._run([*self._args(), "-s", "reload"], "reload")
        self._wait_for(generation, timeout)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGQUIT: workers finish their requests), then harder."""
        pid = self.master_pid()
        if pid is None:
            return
        for signum, wait in (
            (signal.SIGQUIT, timeout),
            (signal.SIGTERM, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            signal_quietly(pid, signum)
            if not wait_gone([pid], wait):
                break
        with contextlib.suppress(OSError):
            self.paths.pid.unlink()

    def error_tail(self, lines: int = 5) -> str:
        try:
            text = self.paths.error_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _run(self, args: list[str], doing: str) -> None:
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExecutorError(f"nginx: cannot {doing}: {exc}", executor="local") from exc
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace").strip() or self.error_tail()
            hint = ""
            if "Address already in use" in output:
                hint = "; another program uses that port: set executor.options.listen"
            raise ExecutorError(
                f"nginx: cannot {doing} (exit {done.returncode}): {output}{hint}",
                executor="local",
            )

    def answered_generation(self) -> str | None:
        """The generation a worker answers with now, or None when nothing answers."""
        host, port = self.listen
        connection = http.client.HTTPConnection(host, port, timeout=1.0)
        try:
            connection.request("GET", GENERATION_PATH)
            response = connection.getresponse()
            return response.read().decode().strip() if response.status == 200 else None
        except OSError:
            return None
        finally:
            connection.close()

    def _wait_for(self, generation: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.answered_generation() == generation:
                return
            if time.monotonic() > deadline:
                raise ExecutorError(
                    f"nginx did not apply the new config within {timeout:g}s: "
                    f"{self.error_tail() or 'no error logged'}",
                    executor="local",
                )
            time.sleep(0.01)
