"""The local executor: real stand-in replicas on 127.0.0.1 behind a real nginx.

Needs the nginx binary (Debian: ``nginx-light`` or ``nginx``; scripts/test installs
it). Under ``CI=true`` a missing nginx fails these tests; elsewhere they are skipped
with the reason shown. Every test stops the processes it started (the fixtures'
finalizers stop the replicas and nginx of its state directory, by pid).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from arbiter.errors import ConfigError, ExecutorError
from arbiter.executors.local import LocalExecutor, owned_replica_pids
from arbiter.executors.nginx import (
    NGINX_PATHS,
    NginxPaths,
    Route,
    WeightedGroup,
    is_running,
    render_config,
    server_weights,
    wait_gone,
)
from arbiter.ports import SystemClock
from tests.executors.contract import OTHER, WORKLOAD, A, B, ExecutorContract, Harness

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NGINX = shutil.which("nginx") or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)
WARMUP = 0.5


def require_nginx() -> None:
    if NGINX is not None:
        return
    if IN_CI:
        pytest.fail("nginx is required under CI=true (scripts/test installs nginx-light)")
    pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; scripts/test does)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def force_stop(state_dir: Path) -> None:
    """Last resort after a test: kill by pid whatever this state dir still runs."""
    pids = owned_replica_pids(state_dir)
    pid_file = NginxPaths(state_dir / "nginx").pid
    if pid_file.exists():
        pid = int(pid_file.read_text().strip() or 0)
        if is_running(pid, cmdline_contains=("nginx",)):
            pids.append(pid)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_gone(pids, 5.0)


@dataclass
class Local:
    """Makes executors over one state directory (a restart is just another one)."""

    state_dir: Path
    port: int
    made: list[LocalExecutor]

    def __call__(self, **options: Any) -> LocalExecutor:
        settings = {
            "state_dir": str(self.state_dir),
            "listen": f"127.0.0.1:{self.port}",
            "warmup_seconds": WARMUP,
            "latency_ms": 5,
            "stop_timeout_seconds": 5,
            **options,
        }
        executor = LocalExecutor(SystemClock(), settings)
        self.made.append(executor)
        return executor


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    require_nginx()
    factory = Local(tmp_path / "state", free_port(), [])
    try:
        yield factory
    finally:
        if factory.made:
            factory.made[-1].stop_all()
        for executor in factory.made:
            executor.close()
        force_stop(factory.state_dir)
        assert owned_replica_pids(factory.state_dir) == []


def wait_all_ready(executor: LocalExecutor, timeout: float = 15.0) -> None:
    def ready() -> bool:
        return all(g.ready == g.desired for g in executor.groups())

    wait_until(ready, timeout, "every replica to answer /healthz with 200")


class TestLocalExecutor(ExecutorContract):
    @pytest.fixture
    def h(self, local: Local) -> Iterator[Harness]:
        harness = Harness(local(), lambda: None, None)
        harness.wait_ready = lambda: wait_all_ready(harness.executor)  # type: ignore[arg-type]

        def exhaust(offer: Any) -> None:
            # As an operator would: restart with the offer's capacity set to 0.
            harness.executor = local(capacity={offer.key: 0})

        harness.exhaust = exhaust
        yield harness


# -- replicas ----------------------------------------------------------------------------


def test_a_restarted_executor_adopts_the_running_replicas_without_duplicates(
    local: Local,
) -> None:
    first = local()
    first.ensure(WORKLOAD, A, 2)
    first.ensure(OTHER, B, 1)
    wait_all_ready(first)
    running = owned_replica_pids(local.state_dir)
    assert len(running) == 3
    first.close()

    restarted = local()
    assert {(g.id, g.desired, g.ready) for g in restarted.groups()} == {
        (f"chat@{A.key}", 2, 2),
        (f"embed@{B.key}", 1, 1),
    }
    again = restarted.ensure(WORKLOAD, A, 2)
    assert (again.desired, again.ready) == (2, 2)
    assert owned_replica_pids(local.state_dir) == running

    restarted.ensure(WORKLOAD, A, 0)
    restarted.ensure(OTHER, B, 0)
    assert restarted.groups() == []
    assert owned_replica_pids(local.state_dir) == []


def test_a_killed_replica_is_reported_not_ready_and_ensure_replaces_it(local: Local) -> None:
    executor = local()
    executor.ensure(WORKLOAD, A, 2)
    wait_all_ready(executor)
    victim, survivor = owned_replica_pids(local.state_dir)
    os.kill(victim, signal.SIGKILL)
    wait_gone([victim], 5.0)

    group = executor.group("chat", A)
    assert group is not None and (group.desired, group.ready) == (2, 1)

    executor.ensure(WORKLOAD, A, 2)
    wait_all_ready(executor)
    now = owned_replica_pids(local.state_dir)
    assert len(now) == 2 and survivor in now and victim not in now


def test_scaling_down_stops_the_extra_replicas_gracefully(local: Local) -> None:
    executor = local()
    executor.ensure(WORKLOAD, A, 3)
    wait_all_ready(executor)
    executor.ensure(WORKLOAD, A, 1)
    assert len(owned_replica_pids(local.state_dir)) == 1
    logs = "".join(p.read_text() for p in (local.state_dir / "logs").iterdir())
    assert logs.count("model_server: drained after") == 2


def test_replicas_of_each_region_take_that_regions_warm_up(local: Local) -> None:
    executor = local(regions={"us-east-1": {"warmup_seconds": 30}})
    executor.ensure(WORKLOAD, A, 1)
    executor.ensure(WORKLOAD, B, 1)
    wait_until(lambda: executor.group("chat", A).ready == 1, 10, "the us-east4 replica")  # type: ignore[union-attr]
    slow = executor.group("chat", B)
    assert slow is not None and slow.ready == 0


def test_the_capacity_option_makes_an_offer_run_out(local: Local) -> None:
    executor = local(capacity={"gcp:us-east4": 2}, max_replicas=3)
    executor.ensure(WORKLOAD, A, 2)
    with pytest.raises(ExecutorError) as caught:
        executor.ensure(WORKLOAD, A, 3)
    assert "capacity" in str(caught.value)
    with pytest.raises(ExecutorError) as caught:
        executor.ensure(OTHER, B, 2)
    assert "max_replicas is 3" in str(caught.value)
    assert executor.group("chat", A).desired == 2  # type: ignore[union-attr]


# -- traffic -----------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float
    status: int | None
    region: str | None
    error: str | None = None


def complete(port: int, workload: str, timeout: float = 10.0) -> Answer:
    sent = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        connection.request(
            "POST",
            f"/w/{workload}/v1/chat/completions",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        return Answer(sent, response.status, response.getheader("X-Arbiter-Region"))
    except OSError as exc:
        return Answer(sent, None, None, repr(exc))
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_moving_all_weight_to_another_region_under_load_drops_no_request(local: Local) -> None:
    executor = local(latency_ms=15)
    a = executor.ensure(WORKLOAD, A, 2)
    executor.set_weights("chat", {a.id: 1})
    b = executor.ensure(WORKLOAD, B, 2)
    wait_all_ready(executor)

    rate, seconds = 100, 10.0
    answers: list[Answer] = []
    done = threading.Event()

    def load() -> None:
        with ThreadPoolExecutor(max_workers=32) as pool:
            start = time.monotonic()
            futures = []
            for i in range(int(rate * seconds)):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(complete, local.port, "chat"))
            answers.extend(f.result() for f in futures)
        done.set()

    loader = threading.Thread(target=load)
    began = time.monotonic()
    loader.start()
    try:
        time.sleep(2.0)
        executor.set_weights("chat", {a.id: 1, b.id: 1})
        time.sleep(2.0)
        executor.set_weights("chat", {b.id: 1})
        shifted = time.monotonic()
        wait_until(lambda: executor.in_flight("chat", a.id) == 0, 10, "group A to drain")
        executor.ensure(WORKLOAD, A, 0)
        released = time.monotonic()
    finally:
        loader.join(timeout=60)
    assert done.is_set()

    failures = [x for x in answers if x.status != 200]
    elapsed = max(x.sent for x in answers) - began
    print(
        f"\nload: {len(answers)} requests in {elapsed:.1f}s "
        f"({len(answers) / elapsed:.0f}/s), {len(failures)} failed; "
        f"A drained {released - shifted:.2f}s after the shift"
    )
    assert failures == []
    assert len(answers) >= 500 and len(answers) / elapsed >= 50
    before = {x.region for x in answers if x.sent < began + 1.9}
    during = {x.region for x in answers if began + 2.5 < x.sent < began + 3.9}
    after = {x.region for x in answers if x.sent > released}
    assert before == {"us-east4"}
    assert during == {"us-east4", "us-east-1"}
    assert after == {"us-east-1"}
    assert executor.groups() == [executor.group("chat", B)]


def test_in_flight_counts_the_requests_a_group_is_serving(local: Local) -> None:
    executor = local(latency_ms=800)
    a = executor.ensure(WORKLOAD, A, 1)
    executor.set_weights("chat", {a.id: 1})
    wait_all_ready(executor)
    with ThreadPoolExecutor(max_workers=3) as pool:
        pending = [pool.submit(complete, local.port, "chat") for _ in range(3)]
        wait_until(lambda: executor.in_flight("chat", a.id) == 3, 5, "3 requests in flight")
        assert [f.result().status for f in pending] == [200, 200, 200]
    assert executor.in_flight("chat", a.id) == 0


def test_a_workload_without_weights_is_answered_503_by_the_proxy(local: Local) -> None:
    executor = local()
    executor.ensure(WORKLOAD, A, 1)
    wait_all_ready(executor)
    assert complete(local.port, "chat").status == 503
    assert complete(local.port, "nosuch").status == 404


def test_the_proxy_binds_127_0_0_1_only(local: Local) -> None:
    executor = local()
    a = executor.ensure(WORKLOAD, A, 1)
    executor.set_weights("chat", {a.id: 1})
    wait_all_ready(executor)
    assert complete(local.port, "chat").status == 200
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local_address, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local_address.rsplit(":", 1)[1], 16) == local.port:
                    listening.append(local_address)
    assert listening == ["0100007F:" + f"{local.port:04X}"]
    if sys.platform == "linux":  # all of 127/8 is loopback there; 127.0.0.2 must be refused
        with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
            probe.settimeout(2)
            probe.connect(("127.0.0.2", local.port))


def test_a_restarted_executor_adopts_the_proxy_and_keeps_its_routes(local: Local) -> None:
    first = local()
    a = first.ensure(WORKLOAD, A, 1)
    first.set_weights("chat", {a.id: 1})
    master = first.nginx.master_pid()
    first.close()
    restarted = local()
    assert restarted.nginx.master_pid() == master
    assert restarted.weights("chat") == {a.id: 1}
    wait_all_ready(restarted)
    assert complete(local.port, "chat").region == "us-east4"


# -- options and configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({"listen": "0.0.0.0:8080"}, "executor.options.listen", "127.0.0.1 only"),
        ({"listen": "8080"}, "executor.options.listen", "expected 127.0.0.1:PORT"),
        ({"warmup_second": 1}, "executor.options.warmup_second", "unknown option"),
        ({"latency_ms": -1}, "executor.options.latency_ms", "at least 0"),
        (
            {"regions": {"us-east4": {"latency": 3}}},
            "executor.options.regions.us-east4.latency",
            "known: warmup_seconds, latency_ms",
        ),
        ({"python": "/no/such/python"}, "executor.options.python", "not an executable"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(
    tmp_path: Path, options: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalExecutor(SystemClock(), {"state_dir": str(tmp_path), **options})
    assert caught.value.key == key
    assert message in str(caught.value)


def test_a_missing_nginx_is_an_executor_error_saying_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError) as caught:
        LocalExecutor(SystemClock(), {"state_dir": str(tmp_path), "nginx": "/no/such/nginx"})
    assert "apt-get install nginx-light" in str(caught.value)


def test_a_groups_weight_is_split_evenly_over_its_replicas() -> None:
    two = WeightedGroup("a", 1, (1001, 1002))
    three = WeightedGroup("b", 1, (2001, 2002, 2003))
    idle = WeightedGroup("c", 0, (3001,))
    weights = server_weights([two, three, idle])
    share = {g: sum(w for gid, _, w in weights if gid == g) for g in ("a", "b")}
    assert share["a"] == share["b"]
    assert [port for _, port, _ in weights] == [1001, 1002, 2001, 2002, 2003]


def test_the_config_leaves_zero_weight_groups_out_and_listens_on_loopback(
    tmp_path: Path,
) -> None:
    route = Route(
        "chat", (WeightedGroup("chat@a", 0, (1001,)), WeightedGroup("chat@b", 3, (2001,)))
    )
    text, generation = render_config(
        [route], paths=NginxPaths(tmp_path), listen=("127.0.0.1", 8080)
    )
    assert "server 127.0.0.1:2001 weight=1" in text
    assert "1001;" not in text and ":1001 " not in text
    assert [line.strip() for line in text.splitlines() if "listen" in line] == [
        "listen 127.0.0.1:8080;"
    ]
    assert f'return 200 "{generation}\\n";' in text


# -- the stand-in replica ---------------------------------------------------------------------


def test_the_model_server_drains_on_sigterm_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arbiter.executors.model_server",
            "--port",
            str(port),
            "--region",
            "eu-west-1",
            "--warmup-seconds",
            "0",
            "--latency-ms",
            "700",
        ],
        stderr=subprocess.PIPE,
    )
    try:

        def healthy() -> bool:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                connection.request("GET", "/healthz")
                return connection.getresponse().status == 200
            except OSError:
                return False

        wait_until(healthy, 10, "the model server to listen")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_direct_completion, port)
            time.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            answer = pending.result(timeout=10)
        assert answer["choices"][0]["message"]["content"] == "Hello from eu-west-1 (eu-west-1)."
        assert server.wait(timeout=10) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)
        assert server.stderr is not None
        server.stderr.close()


def _direct_completion(port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/v1/chat/completions", body=b'{"messages": []}')
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("X-Arbiter-Region") == "eu-west-1"
    payload: dict[str, Any] = json.loads(response.read())
    connection.close()
    return payload
