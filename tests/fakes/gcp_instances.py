"""A local fake of the Compute Engine instance API the cloud executor drives, on 127.0.0.1.

Routes (``/compute/v1/projects/{project}/...``), answered as the real service does:

* ``POST zones/{zone}/instances`` — insert: 409 ``alreadyExists`` for a taken name,
  otherwise a zone operation (``RUNNING``) whose result is ``DONE`` — with an error
  for an exhausted (machine type, zone) — and an instance in ``PROVISIONING``;
* ``DELETE zones/{zone}/instances/{name}`` — 404 ``notFound`` or a delete operation;
* ``GET aggregated/instances`` — every zone's instances, filtered by the label
  expressions the executor sends (``labels.K = "V"``, ``labels.K:*``; anything else
  is a 400 like an invalid filter), paged by zone with ``maxResults``/``pageToken``;
* ``GET zones/{zone}/operations/{op}`` and ``POST .../operations/{op}/wait``;
* ``GET zones/{zone}/machineTypes/{type}`` (from :data:`MACHINE_TYPES`) and
  ``GET regions/{region}`` (its ``zones``).

Knobs: ``exhaust(machine_type, zones, code=...)`` makes inserts fail in the operation
(``ZONE_RESOURCE_POOL_EXHAUSTED``, ``..._WITH_DETAILS``, ``QUOTA_EXCEEDED`` with
quota details) or, with ``in_answer=True``, in the HTTP answer (a 403
``quotaExceeded``); ``tick()`` moves PROVISIONING/STAGING instances one step on
(PROVISIONING → STAGING → RUNNING, so two ticks boot them); ``fail(route, status)``
answers the next request of a route with a Google error. Every request is recorded
in ``requests`` (method, path, query, JSON body).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROJECT = "arbiter-test"
_BASE = "https://www.googleapis.com/compute/v1"

MACHINE_TYPES: dict[str, list[tuple[str, int]]] = {
    "g2-standard-4": [("nvidia-l4", 1)],
    "g2-standard-24": [("nvidia-l4", 2)],
    "g2-standard-96": [("nvidia-l4", 8)],
    "a2-highgpu-1g": [("nvidia-tesla-a100", 1)],
    "a2-highgpu-4g": [("nvidia-tesla-a100", 4)],
    "a3-highgpu-8g": [("nvidia-h100-80gb", 8)],
    "n1-standard-8": [],
}
"""Machine type → accelerators (type, count), as ``machineTypes.get`` reports them."""

REGIONS: dict[str, list[str]] = {
    "us-east4": ["us-east4-a", "us-east4-b", "us-east4-c"],
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
}

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
_FILTER_EQ = re.compile(r'^labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"$')
_FILTER_HAS = re.compile(r"^labels\.([a-z0-9_-]+):\*$")
_NEXT_STATUS = {"PROVISIONING": "STAGING", "STAGING": "RUNNING"}


def google_error(status: int, message: str, reason: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
        }
    }


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass(frozen=True)
class _Exhausted:
    code: str
    in_answer: bool


class FakeGcpInstances:
    """Compute Engine instances, zone operations, machine types and regions."""

    def __init__(self, *, project: str = PROJECT) -> None:
        self.project = project
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        """(zone, name) → the instance as ``instances.get`` would return it."""
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Seen] = []
        self._exhausted: dict[tuple[str, str], _Exhausted] = {}
        self._scripted: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._ids = 1000
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-gcp-instances",
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> FakeGcpInstances:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reset(self) -> None:
        with self._lock:
            self.instances.clear()
            self.operations.clear()
            self.requests.clear()
            self._exhausted.clear()
            self._scripted.clear()

    # -- knobs ---------------------------------------------------------------------

    def exhaust(
        self,
        machine_type: str,
        zones: list[str],
        *,
        code: str = "ZONE_RESOURCE_POOL_EXHAUSTED",
        in_answer: bool = False,
    ) -> None:
        """Inserts of ``machine_type`` in ``zones`` fail with ``code``."""
        with self._lock:
            for zone in zones:
                self._exhausted[(machine_type, zone)] = _Exhausted(code, in_answer)

    def tick(self) -> None:
        """Move every booting instance one step on (PROVISIONING → STAGING → RUNNING)."""
        with self._lock:
            for instance in self.instances.values():
                instance["status"] = _NEXT_STATUS.get(instance["status"], instance["status"])

    def boot(self) -> None:
        """Every booting instance is RUNNING."""
        self.tick()
        self.tick()

    def set_status(self, zone: str, name: str, status: str) -> None:
        with self._lock:
            self.instances[(zone, name)]["status"] = status

    def fail(self, route: str, status: int, reason: str, message: str = "injected") -> None:
        """Answer the next request of ``route`` (``insert``, ``delete``, ``list``,
        ``machine_type``, ``region``, ``operation_get``, ``operation_wait``) with a
        Google error."""
        with self._lock:
            self._scripted.setdefault(route, deque()).append(
                (status, google_error(status, message, reason))
            )

    def inserted(self) -> list[dict[str, Any]]:
        """The JSON bodies of every insert request, in order."""
        return [
            r.body for r in self.requests if r.method == "POST" and r.path.endswith("/instances")
        ]

    def running(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self.instances.values()]

    # -- serving -------------------------------------------------------------------

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(Seen(method, path, query, body))
            route, params = _route(method, path)
            if route is None:
                return 404, google_error(404, f"not found: {method} {path}", "notFound")
            scripted = self._scripted.get(route)
            if scripted:
                return scripted.popleft()
            if params.get("project") != self.project:
                return 404, google_error(
                    404, f"project {params.get('project')} not found", "notFound"
                )
            return getattr(self, f"_{route}")(params, query, body)  # type: ignore[no-any-return]

    def _insert(self, params: dict[str, str], query: Any, body: Any) -> tuple[int, Any]:
        zone = params["zone"]
        name = body["name"]
        if (zone, name) in self.instances:
            return 409, google_error(
                409,
                f"The resource '{self._path(zone, name)}' already exists",
                "alreadyExists",
            )
        machine_type = body["machineType"].rsplit("/", 1)[-1]
        exhausted = self._exhausted.get((machine_type, zone))
        if exhausted is not None and exhausted.in_answer:
            return 403, google_error(
                403,
                f"Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region {zone.rsplit('-', 1)[0]}.",
                "quotaExceeded",
            )
        failure: dict[str, Any] = {}
        if exhausted is not None:
            stock_out = "EXHAUSTED" in exhausted.code
            failure = {
                "error": {"errors": [_operation_error(exhausted.code, zone, machine_type)]},
                "httpErrorStatusCode": 503 if stock_out else 403,
                "httpErrorMessage": "SERVICE UNAVAILABLE" if stock_out else "FORBIDDEN",
            }
        operation = self._operation(zone, "insert", f"zones/{zone}/instances/{name}", **failure)
        if exhausted is None:
            self._ids += 1
            self.instances[(zone, name)] = {
                **body,
                "kind": "compute#instance",
                "id": str(self._ids),
                "zone": f"{_BASE}/projects/{self.project}/zones/{zone}",
                "machineType": f"{_BASE}/{self._path(zone)}/machineTypes/{machine_type}",
                "status": "PROVISIONING",
                "creationTimestamp": _now(),
                "selfLink": f"{_BASE}/projects/{self.project}/zones/{zone}/instances/{name}",
                "networkInterfaces": [
                    {**interface, "networkIP": f"10.128.0.{self._ids % 250 + 2}"}
                    for interface in body.get("networkInterfaces", [])
                ],
            }
        # The answer says RUNNING; how it ends is only in the finished operation.
        return 200, {
            **{k: v for k, v in operation.items() if k not in failure},
            "status": "RUNNING",
        }

    def _delete(self, params: dict[str, str], query: Any, body: Any) -> tuple[int, Any]:
        zone, name = params["zone"], params["name"]
        if self.instances.pop((zone, name), None) is None:
            return 404, google_error(
                404,
                f"The resource '{self._path(zone, name)}' was not found",
                "notFound",
            )
        return 200, {
            **self._operation(zone, "delete", f"zones/{zone}/instances/{name}"),
            "status": "RUNNING",
        }

    def _list(
        self, params: dict[str, str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        expression = (query.get("filter") or [""])[0]
        keep = _label_filter(expression)
        if keep is None:
            return 400, google_error(
                400, f"Invalid value for field 'filter': '{expression}'", "invalid"
            )
        zones = sorted(
            {zone for zone, _ in self.instances} | {z for zs in REGIONS.values() for z in zs}
        )
        start = int((query.get("pageToken") or ["0"])[0])
        size = int((query.get("maxResults") or ["500"])[0])
        page = zones[start : start + size]
        items: dict[str, Any] = {}
        for zone in page:
            found = [
                instance
                for (z, _), instance in sorted(self.instances.items())
                if z == zone and keep(instance.get("labels") or {})
            ]
            if found:
                items[f"zones/{zone}"] = {"instances": found}
            else:
                items[f"zones/{zone}"] = {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope 'zones/{zone}' on this page.",
                        "data": [{"key": "scope", "value": f"zones/{zone}"}],
                    }
                }
        answer: dict[str, Any] = {"kind": "compute#instanceAggregatedList", "items": items}
        if start + size < len(zones):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def _operation_get(self, params: dict[str, str], query: Any, body: Any) -> tuple[int, Any]:
        found = self.operations.get((params["zone"], params["operation"]))
        if found is None:
            return 404, google_error(404, f"operation {params['operation']} not found", "notFound")
        return 200, found

    _operation_wait = _operation_get

    def _machine_type(self, params: dict[str, str], query: Any, body: Any) -> tuple[int, Any]:
        name = params["machine_type"]
        if name not in MACHINE_TYPES:
            return 404, google_error(
                404,
                f"The resource 'zones/{params['zone']}/machineTypes/{name}' was not found",
                "notFound",
            )
        accelerators = [
            {"guestAcceleratorType": kind, "guestAcceleratorCount": count}
            for kind, count in MACHINE_TYPES[name]
        ]
        return 200, {
            "kind": "compute#machineType",
            "name": name,
            "zone": params["zone"],
            "accelerators": accelerators,
        }

    def _region(self, params: dict[str, str], query: Any, body: Any) -> tuple[int, Any]:
        zones = REGIONS.get(params["region"])
        if zones is None:
            return 404, google_error(404, f"region {params['region']} not found", "notFound")
        urls = [f"{_BASE}/projects/{self.project}/zones/{zone}" for zone in zones]
        return 200, {
            "kind": "compute#region",
            "name": params["region"],
            "status": "UP",
            "zones": urls,
        }

    def _path(self, zone: str, name: str | None = None) -> str:
        path = f"projects/{self.project}/zones/{zone}"
        return f"{path}/instances/{name}" if name else path

    def _operation(self, zone: str, kind: str, target: str, **failure: Any) -> dict[str, Any]:
        self._ids += 1
        name = f"operation-{self._ids}"
        operation = {
            "kind": "compute#operation",
            "id": str(self._ids),
            "name": name,
            "operationType": kind,
            "status": "DONE",
            "progress": 100,
            "targetLink": f"{_BASE}/projects/{self.project}/{target}",
            "zone": f"{_BASE}/projects/{self.project}/zones/{zone}",
            "insertTime": _now(),
            **failure,
        }
        self.operations[(zone, name)] = operation
        return dict(operation)


def _operation_error(code: str, zone: str, machine_type: str) -> dict[str, Any]:
    if code == "QUOTA_EXCEEDED":
        return {
            "code": code,
            "message": (
                f"Quota 'PREEMPTIBLE_NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region {zone[:-2]}."
            ),
            "errorDetails": [
                {
                    "quotaInfo": {
                        "metricName": "compute.googleapis.com/preemptible_nvidia_l4_gpus",
                        "limitName": "PREEMPTIBLE-NVIDIA-L4-GPUS-per-project-region",
                        "dimensions": {"region": zone[:-2]},
                        "limit": 0,
                    }
                }
            ],
        }
    return {
        "code": code,
        "message": (
            f"The zone 'projects/{PROJECT}/zones/{zone}' does not have enough resources "
            f"available to fulfill the request.  Try a different zone, or try again later."
        ),
    }


def _label_filter(expression: str) -> Callable[[dict[str, str]], bool] | None:
    """The label test of a filter expression the executor sends; None if unsupported."""
    if not expression:
        return lambda labels: True
    if match := _FILTER_EQ.match(expression):
        key, value = match.groups()
        return lambda labels: labels.get(key) == value
    if match := _FILTER_HAS.match(expression):
        key = match.group(1)
        return lambda labels: key in labels
    return None


def _route(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    parts = [part for part in path.split("/") if part]
    if parts[:3] != ["compute", "v1", "projects"] or len(parts) < 5:
        return None, {}
    params = {"project": parts[3]}
    rest = parts[4:]
    if method == "GET" and rest == ["aggregated", "instances"]:
        return "list", params
    if method == "GET" and len(rest) == 2 and rest[0] == "regions":
        return "region", {**params, "region": rest[1]}
    if len(rest) >= 3 and rest[0] == "zones":
        params["zone"] = rest[1]
        tail = rest[2:]
        if method == "POST" and tail == ["instances"]:
            return "insert", params
        if method == "DELETE" and len(tail) == 2 and tail[0] == "instances":
            return "delete", {**params, "name": tail[1]}
        if method == "GET" and len(tail) == 2 and tail[0] == "operations":
            return "operation_get", {**params, "operation": tail[1]}
        if method == "POST" and len(tail) == 3 and tail[0] == "operations" and tail[2] == "wait":
            return "operation_wait", {**params, "operation": tail[1]}
        if method == "GET" and len(tail) == 2 and tail[0] == "machineTypes":
            return "machine_type", {**params, "machine_type": tail[1]}
    return None, {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "-00:00")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        fake: FakeGcpInstances = self.server.fake  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        status, answer = fake.answer(self.command, split.path, parse_qs(split.query), body)
        data = json.dumps(answer).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    do_GET = _handle
    do_POST = _handle
    do_DELETE = _handle
