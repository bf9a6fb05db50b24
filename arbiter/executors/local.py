"""The local executor, the embedded default: replicas are processes on this machine.

Each replica is a stand-in model server (:mod:`arbiter.executors.model_server`) on
its own free port on 127.0.0.1, answering like the region of its offer would (its
own warm-up time and latency). One private nginx (:mod:`arbiter.executors.nginx`)
in front serves every workload under ``http://127.0.0.1:8080/w/<workload>/`` and
splits its requests across the workload's groups by the weights the router is
given; a change of weights is a graceful ``nginx -s reload``.

What runs is recorded in ``state.json`` in the state directory (group, offer,
desired count, and pid, port and slot of every replica), so a restarted daemon's
new executor adopts the replicas and the proxy that still run instead of starting
duplicates; replicas and nginx run in their own sessions and outlive the daemon.

Contract notes (see :class:`arbiter.ports.Executor` and ``TrafficRouter``):

* ``ensure`` starts missing replicas (and replaces dead ones) without waiting for
  them to warm up; scaling down takes the replicas out of the proxy, then stops
  them with SIGTERM (they finish their requests) and waits up to
  ``stop_timeout_seconds`` before SIGKILL. ``ready`` counts replicas whose
  ``/healthz`` answers 200.
* Capacity runs out only where the ``capacity`` option says so (per offer key,
  ``provider:region`` or region), or past ``max_replicas`` on the machine:
  :class:`~arbiter.errors.CapacityUnavailable`.
* ``in_flight`` sums the replicas' own ``/inflight`` counters; None when a live
  replica does not answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import math
import os
import pwd
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import structlog
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from arbiter.domain.fleet import ReplicaGroup, group_id
from arbiter.domain.market import Offer
from arbiter.domain.workloads import Workload
from arbiter.errors import CapacityUnavailable, ConfigError, ExecutorError
from arbiter.executors.nginx import (
    Nginx,
    Route,
    WeightedGroup,
    find_nginx,
    is_running,
    render_config,
    signal_quietly,
    wait_gone,
)
from arbiter.ports import Clock

NAME = "local"
SERVER_MODULE = "arbiter.executors.model_server"
LOOPBACK = "127.0.0.1"


def default_state_dir() -> Path:
    """``local-executor`` in the user's data directory (next to the SQLite file)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("arbiter")) / "local-executor"


# -- options ------------------------------------------------------------------------


def _finite_non_negative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of at least 0")
    return value


Seconds = Annotated[float, AfterValidator(_finite_non_negative)]


class RegionOptions(BaseModel):
    """How the stand-in replicas of one region behave."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_seconds: Seconds | None = None
    latency_ms: Seconds | None = None


class LocalOptions(BaseModel):
    """``[executor.options]`` of the local executor. Closed: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    state_dir: Path | None = None
    """Where state.json, replica logs and nginx's files live; default: the data dir."""
    listen: str = f"{LOOPBACK}:8080"
    """The proxy's address; 127.0.0.1 only."""
    warmup_seconds: Seconds = 2.0
    latency_ms: Seconds = 20.0
    regions: dict[str, RegionOptions] = Field(default_factory=dict)
    """Per region (``us-east4`` or ``gcp:us-east4``): warm-up and latency overrides."""
    capacity: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """Most replicas an offer may run (key: offer key, ``provider:region`` or region)."""
    max_replicas: Annotated[int, Field(ge=1)] = 32
    """Most replicas on this machine, all groups together."""
    stop_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    python: str = sys.executable
    """The interpreter that runs the stand-in replicas (must import arbiter)."""
    nginx: str | None = None
    """The nginx binary; default: ``nginx`` on PATH, then /usr/sbin/nginx."""
    access_log: bool = False
    """Write nginx's access log (with the upstream of every request) to the state dir."""

    @field_validator("listen")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected 127.0.0.1:PORT, got {value!r}")
        if host != LOOPBACK:
            raise ValueError(f"the proxy binds 127.0.0.1 only, got {host!r}")
        return value

    @field_validator("python")
    @classmethod
    def _executable(cls, value: str) -> str:
        import shutil

        found = shutil.which(value)
        if found is None:
            raise ValueError(f"{value!r} is not an executable")
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> LocalOptions:
        where = "executor.options"
        if not isinstance(options, Mapping):
            raise ConfigError("expected a table of options", source="config", key=where)
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join([where, *(str(part) for part in error["loc"])])
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                known = ", ".join(cls.model_fields)
                if len(error["loc"]) > 1:
                    known = ", ".join(RegionOptions.model_fields)
                message = f"unknown option; known: {known}"
            raise ConfigError(message, source="config", key=key) from None


# -- state ----------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaRecord(_Record):
    slot: int
    pid: int
    port: int
    started_at: datetime


class GroupRecord(_Record):
    workload: str
    offer: Offer
    desired: int
    replicas: list[ReplicaRecord] = Field(default_factory=list)


class LocalState(_Record):
    version: Literal[1] = 1
    groups: dict[str, GroupRecord] = Field(default_factory=dict)
    weights: dict[str, dict[str, int]] = Field(default_factory=dict)


# -- the executor -------------------------------------------------------------------


class LocalExecutor:
    """Executor and traffic router over local processes behind a private nginx."""

    name = NAME

    def __init__(self, clock: Clock, options: Mapping[str, Any] | None = None) -> None:
        self.clock = clock
        self.options = LocalOptions.parse(options or {})
        self.state_dir = (self.options.state_dir or default_state_dir()).expanduser()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.state_dir / "logs").mkdir(exist_ok=True)
        except OSError as exc:
            raise ExecutorError(
                f"cannot create the state directory {self.state_dir}: {exc}", executor=NAME
            ) from exc
        self.state_file = self.state_dir / "state.json"
        self.nginx = Nginx(
            find_nginx(self.options.nginx), self.state_dir / "nginx", self.options.listen_address
        )
        self._lock = threading.RLock()
        self._http = httpx.Client(timeout=httpx.Timeout(1.0), trust_env=False)
        self._log = structlog.get_logger("arbiter").bind(component="executor", executor=NAME)
        with self._locked() as state:
            self._adopt(state)

    # -- Executor ----------------------------------------------------------------------

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> ReplicaGroup:
        if replicas < 0:
            raise ExecutorError(f"replicas must be at least 0, got {replicas}", executor=NAME)
        gid = group_id(workload.name, offer)
        with self._locked() as state:
            record = state.groups.get(gid)
            live = [r for r in record.replicas if self._alive(r)] if record else []
            if record is not None:
                for gone in record.replicas:
                    if gone not in live:
                        self._log.warning("replica died", group=gid, pid=gone.pid, port=gone.port)
            if replicas == 0:
                if record is not None:
                    del state.groups[gid]
                    self._save(state)
                    self._sync_proxy(state)  # out of the proxy before it stops
                    self._stop(gid, live)
                return ReplicaGroup(workload=workload.name, offer=offer, desired=0, ready=0)
            if replicas > len(live):
                self._check_capacity(state, gid, offer, replicas)
            keep = sorted(live, key=lambda r: r.slot)[:replicas]
            stopping = [r for r in live if r not in keep]
            if record is None:
                record = GroupRecord(workload=workload.name, offer=offer, desired=replicas)
                state.groups[gid] = record
            used = {r.slot for r in keep}
            free = [slot for slot in range(replicas * 2) if slot not in used]
            started = [
                self._start(state, gid, offer, slot) for slot in free[: replicas - len(keep)]
            ]
            changed = record.desired != replicas or record.replicas != keep + started
            record.desired = replicas
            record.replicas = sorted(keep + started, key=lambda r: r.slot)
            if changed:
                self._save(state)
            self._sync_proxy(state)
            self._stop(gid, stopping)
        found = self.group(workload.name, offer)
        if found is None:  # pragma: no cover - we just recorded it
            raise ExecutorError(f"{gid} vanished from {self.state_file}", executor=NAME)
        return found

    def group(self, workload: str, offer: Offer) -> ReplicaGroup | None:
        record = self._load().groups.get(group_id(workload, offer))
        return None if record is None else self._report(record)

    def groups(self, workload: str | None = None) -> list[ReplicaGroup]:
        state = self._load()
        return [
            self._report(record)
            for _, record in sorted(state.groups.items())
            if workload is None or record.workload == workload
        ]

    # -- TrafficRouter -------------------------------------------------------------------

    def set_weights(self, workload: str, weights: Mapping[str, int]) -> None:
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ExecutorError(
                    f"weight of {key} must be a whole number of at least 0, got {weight!r}",
                    executor=NAME,
                )
        kept = {key: weight for key, weight in sorted(weights.items()) if weight > 0}
        with self._locked() as state:
            if state.weights.get(workload, {}) != kept:
                if kept:
                    state.weights[workload] = kept
                else:
                    state.weights.pop(workload, None)
                self._save(state)
                self._log.info("~ route", workload=workload, weights=kept)
            self._sync_proxy(state)

    def weights(self, workload: str) -> dict[str, int]:
        return dict(self._load().weights.get(workload, {}))

    def in_flight(self, workload: str, group_id: str) -> int | None:
        record = self._load().groups.get(group_id)
        if record is None or record.workload != workload:
            return 0
        total = 0
        for replica in record.replicas:
            if not self._alive(replica):
                continue
            try:
                response = self._http.get(f"http://{LOOPBACK}:{replica.port}/inflight")
                total += int(response.json()["in_flight"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return None
        return total

    # -- beyond the ports ------------------------------------------------------------------

    def proxy_url(self, workload: str) -> str:
        """Where the workload's requests go: its location on the proxy."""
        host, port = self.options.listen_address
        return f"http://{host}:{port}/w/{workload}/"

    def stop_all(self) -> None:
        """Stop every replica and the proxy and forget them (tests, ``uninstall``).

        A daemon that merely exits leaves both running for its successor to adopt."""
        with self._locked() as state:
            for gid, record in sorted(state.groups.items()):
                self._stop(gid, [r for r in record.replicas if self._alive(r)])
            state.groups.clear()
            state.weights.clear()
            self._save(state)
            self._stop_unrecorded(state)
            self.nginx.stop(self.options.stop_timeout_seconds)

    def close(self) -> None:
        """Release this object's connections; replicas and the proxy keep running."""
        self._http.close()

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[LocalState]:
        """The state, held exclusively (threads of this process and other processes)."""
        with self._lock, open(self.state_dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._load()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> LocalState:
        try:
            raw = self.state_file.read_text()
        except FileNotFoundError:
            return LocalState()
        except OSError as exc:
            raise ExecutorError(f"cannot read {self.state_file}: {exc}", executor=NAME) from exc
        try:
            return LocalState.model_validate_json(raw)
        except ValidationError as exc:
            # Never start afresh over it: the replicas it lists would be orphaned.
            raise ExecutorError(
                f"{self.state_file} is not a valid local executor state "
                f"({exc.error_count()} error(s), first: {exc.errors()[0]['msg']}); "
                "stop its replicas and remove it to start afresh",
                executor=NAME,
            ) from None

    def _save(self, state: LocalState) -> None:
        tmp = self.state_file.with_name("state.json.tmp")
        tmp.write_text(json.dumps(state.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)

    def _adopt(self, state: LocalState) -> None:
        replicas = [r for g in state.groups.values() for r in g.replicas]
        alive = [r for r in replicas if self._alive(r)]
        if replicas:
            self._log.info(
                "adopted replicas",
                groups=len(state.groups),
                running=len(alive),
                dead=len(replicas) - len(alive),
                state=str(self.state_file),
            )
        self._stop_unrecorded(state)
        if state.weights:
            self._sync_proxy(state)

    def _alive(self, replica: ReplicaRecord) -> bool:
        return is_running(
            replica.pid, cmdline_contains=(SERVER_MODULE, f"--port\0{replica.port}\0")
        )

    def _report(self, record: GroupRecord) -> ReplicaGroup:
        ready = sum(1 for r in record.replicas if self._healthy(r))
        return ReplicaGroup(
            workload=record.workload,
            offer=record.offer,
            desired=record.desired,
            ready=ready,
            endpoint=",".join(f"{LOOPBACK}:{r.port}" for r in record.replicas) or None,
        )

    def _healthy(self, replica: ReplicaRecord) -> bool:
        if not self._alive(replica):
            return False
        try:
            return self._http.get(f"http://{LOOPBACK}:{replica.port}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def _check_capacity(self, state: LocalState, gid: str, offer: Offer, replicas: int) -> None:
        others = [(k, g) for k, g in state.groups.items() if k != gid]
        limits = self.options.capacity
        for key in (offer.key, offer.region_key, offer.region):
            if key in limits:
                same_offer = sum(len(g.replicas) for _, g in others if g.offer == offer)
                if same_offer + replicas > limits[key]:
                    raise CapacityUnavailable(
                        f"capacity option {key!r} allows {limits[key]} replica(s), "
                        f"{same_offer} run elsewhere and {replicas} were asked for",
                        executor=NAME,
                        offer_key=offer.key,
                        code="capacity",
                    )
                break
        total = sum(len(g.replicas) for _, g in others) + replicas
        if total > self.options.max_replicas:
            raise CapacityUnavailable(
                f"max_replicas is {self.options.max_replicas} and {total} would run",
                executor=NAME,
                offer_key=offer.key,
                code="max_replicas",
            )

    def _region_setting(self, offer: Offer, name: Literal["warmup_seconds", "latency_ms"]) -> float:
        for key in (offer.region_key, offer.region):
            region = self.options.regions.get(key)
            if region is not None and getattr(region, name) is not None:
                return float(getattr(region, name))
        return float(getattr(self.options, name))

    def _start(self, state: LocalState, gid: str, offer: Offer, slot: int) -> ReplicaRecord:
        used = {r.port for g in state.groups.values() for r in g.replicas}
        port = _free_port(used)
        workload = gid.partition("@")[0]
        args = [
            self.options.python,
            "-m",
            SERVER_MODULE,
            "--port",
            str(port),
            "--region",
            offer.region,
            "--offer",
            offer.key,
            "--workload",
            workload,
            "--group",
            gid,
            "--warmup-seconds",
            repr(self._region_setting(offer, "warmup_seconds")),
            "--latency-ms",
            repr(self._region_setting(offer, "latency_ms")),
            "--owner",
            str(self.state_dir),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        log = self.state_dir / "logs" / f"{workload}-{offer.provider}-{offer.region}-{slot}.log"
        try:
            pid = os.posix_spawn(
                args[0] if os.sep in args[0] else _which(args[0]),
                args,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (
                        os.POSIX_SPAWN_OPEN,
                        1,
                        str(log),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                        0o600,
                    ),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setsid=True,  # its own session: it outlives the daemon and its Ctrl-C
            )
        except OSError as exc:
            raise ExecutorError(f"cannot start a replica of {gid}: {exc}", executor=NAME) from exc
        self._log.info("+ start replica", group=gid, slot=slot, pid=pid, port=port, log=str(log))
        return ReplicaRecord(slot=slot, pid=pid, port=port, started_at=self.clock.now())

    def _stop(self, gid: str, replicas: list[ReplicaRecord]) -> None:
        """SIGTERM (they finish their requests), wait, then SIGKILL what is left."""
        if not replicas:
            return
        for replica in replicas:
            self._log.info("- stop replica", group=gid, pid=replica.pid, port=replica.port)
            signal_quietly(replica.pid, signal.SIGTERM)
        left = wait_gone([r.pid for r in replicas], self.options.stop_timeout_seconds)
        for pid in left:
            self._log.warning("replica did not drain in time; killing it", group=gid, pid=pid)
            signal_quietly(pid, signal.SIGKILL)
        wait_gone(left, 5.0)

    def _stop_unrecorded(self, state: LocalState) -> None:
        """Stop replicas this state directory started but never recorded (a crash
        between start and save); nothing routes to them."""
        recorded = {r.pid for g in state.groups.values() for r in g.replicas}
        strays = [pid for pid in owned_replica_pids(self.state_dir) if pid not in recorded]
        for pid in strays:
            self._log.warning("stopping an unrecorded replica", pid=pid)
            signal_quietly(pid, signal.SIGTERM)
        left = wait_gone(strays, self.options.stop_timeout_seconds)
        for pid in left:
            signal_quietly(pid, signal.SIGKILL)

    def _sync_proxy(self, state: LocalState) -> None:
        """Render the proxy config from ``state`` and apply it (start or reload nginx)
        when it changed."""
        routes = []
        for workload in sorted({g.workload for g in state.groups.values()} | set(state.weights)):
            weighted = []
            for gid, weight in sorted(state.weights.get(workload, {}).items()):
                record = state.groups.get(gid)
                if record is None or record.workload != workload:
                    continue
                ports = tuple(r.port for r in record.replicas if self._alive(r))
                weighted.append(WeightedGroup(gid, weight, ports))
            routes.append(Route(workload, tuple(weighted)))
        config, generation = render_config(
            routes,
            paths=self.nginx.paths,
            listen=self.options.listen_address,
            user=_root_user(),
            access_log=self.options.access_log,
        )
        if self.nginx.apply(config, generation):
            self._log.info("proxy config applied", generation=generation, routes=len(routes))


def owned_replica_pids(state_dir: Path) -> list[int]:
    """Pids of the running stand-in replicas started for ``state_dir`` (Linux /proc)."""
    marker = f"{SERVER_MODULE}\0".encode()
    owner = f"--owner\0{state_dir}\0".encode()
    found = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and cmdline.endswith(owner) and is_running(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def _free_port(avoid: set[int]) -> int:
    """A port nothing listens on now on 127.0.0.1 (the replica binds it moments later;
    if another program wins the race the replica exits and ``ensure`` replaces it)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port
    raise ExecutorError("no free port on 127.0.0.1", executor=NAME)


def _which(program: str) -> str:
    import shutil

    found = shutil.which(program)
    if found is None:
        raise ExecutorError(f"executor.options.python: {program!r} not found", executor=NAME)
    return found


def _root_user() -> tuple[str, str] | None:
    """When nginx starts as root its workers would become nobody; keep them as us."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
