"""A local fake of the ARM virtual-machine API the cloud executor drives, on 127.0.0.1.

One ``ThreadingHTTPServer`` on a free port serves, under
``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute``:

* ``PUT virtualMachines/{name}`` — 201 with the VM (``provisioningState: Creating``)
  and an absolute ``http://`` ``Azure-AsyncOperation`` URL (``Retry-After: 0``), like
  ARM; for an exhausted (size, region) either a synchronous 409 error (``SkuNotAvailable``
  style) or an operation that fails (``AllocationFailed`` style, the VM left ``Failed``);
* ``GET virtualMachines/{name}``, ``GET virtualMachines`` (``$expand=instanceView``
  adds power state) and ``DELETE virtualMachines/{name}`` (202 + operation; 204 when
  there is nothing to delete);
* ``GET /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{id}``;
* ``GET /subscriptions/{sub}/providers/Microsoft.Compute/skus`` (``$filter=location
  eq '...'``) from :data:`SKUS`.

Every ARM route answers 401 without a ``Bearer`` token. Knobs: ``exhaust(size,
region, code, in_answer=...)``, ``tick()`` (VMs whose creation succeeded go from
``PowerState/starting`` to ``running``), ``set_power(name, state)``; every request is
recorded in ``requests``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "arbiter-gpu"

SKUS: dict[str, int] = {
    "Standard_NC4as_T4_v3": 1,
    "Standard_NC64as_T4_v3": 4,
    "Standard_NC24ads_A100_v4": 1,
    "Standard_NC96ads_A100_v4": 4,
    "Standard_NV36ads_A10_v5": 1,
    "Standard_D4s_v5": 0,
}
"""VM size → the ``GPUs`` capability, offered in every region."""

_SYNC_MESSAGES = {
    "SkuNotAvailable": (
        "The requested VM size for resource 'Following SKUs have failed for Capacity "
        "Restrictions: {size}' is currently not available in location '{region}'. "
        "Please try another size or deploy to a different location or zones."
    ),
    "OperationNotAllowed": (
        "Operation could not be completed as it results in exceeding approved "
        "LowPriorityCores quota. Additional details - Deployment Model: Resource Manager, "
        "Location: {region}, Current Limit: 0, Current Usage: 0, Additional Required: 4."
    ),
}
_ASYNC_MESSAGE = (
    "Allocation failed. We do not have sufficient capacity for the requested VM size in "
    "this region. Read more about improving likelihood of allocation success at "
    "http://aka.ms/allocation-guidance"
)


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


class FakeAzureVms:
    """Virtual machines of one subscription, their operations, and resource SKUs."""

    def __init__(self, *, subscription_id: str = SUBSCRIPTION) -> None:
        self.subscription_id = subscription_id
        self.vms: dict[tuple[str, str], dict[str, Any]] = {}
        """(resource group, lower-case name) → the VM as ARM stores it."""
        self.operations: dict[str, dict[str, Any]] = {}
        self.requests: list[Seen] = []
        self._exhausted: dict[tuple[str, str], _Exhausted] = {}
        self._lock = threading.Lock()
        self._ids = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-azure-vms",
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> FakeAzureVms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reset(self) -> None:
        with self._lock:
            self.vms.clear()
            self.operations.clear()
            self.requests.clear()
            self._exhausted.clear()

    # -- knobs ---------------------------------------------------------------------

    def exhaust(
        self, size: str, region: str, *, code: str = "AllocationFailed", in_answer: bool = False
    ) -> None:
        """Creating ``size`` VMs in ``region`` fails with ``code``: in the PUT answer
        (``in_answer``, a 409) or in the long-running operation."""
        with self._lock:
            self._exhausted[(size, region)] = _Exhausted(code, in_answer)

    def tick(self) -> None:
        """VMs that finished creating start running."""
        with self._lock:
            for vm in self.vms.values():
                if vm["properties"]["provisioningState"] == "Succeeded":
                    vm["_power"] = "running"

    def set_power(self, name: str, state: str, resource_group: str = RESOURCE_GROUP) -> None:
        with self._lock:
            self.vms[(resource_group, name.lower())]["_power"] = state

    def created(self) -> list[dict[str, Any]]:
        """The JSON bodies of every VM PUT, in order."""
        return [r.body for r in self.requests if r.method == "PUT"]

    # -- serving -------------------------------------------------------------------

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(Seen(method, path, query, body))
            if not str(headers.get("Authorization", "")).startswith("Bearer "):
                return 401, _error("AuthenticationFailed", "no bearer token"), {}
            if "api-version" not in query:
                return 400, _error("MissingApiVersionParameter", "api-version is required"), {}
            sub = re.escape(self.subscription_id)
            compute = r"/providers/Microsoft\.Compute"
            vm = re.fullmatch(
                rf"/subscriptions/{sub}/resourceGroups/([^/]+){compute}/virtualMachines(?:/([^/]+))?",
                path,
                re.IGNORECASE,
            )
            if vm is not None:
                group, name = vm.group(1), vm.group(2)
                if name is None and method == "GET":
                    return self._list(group, query)
                if name is not None and method == "PUT":
                    return self._put(group, name, path, body)
                if name is not None and method == "GET":
                    return self._get(group, name, query)
                if name is not None and method == "DELETE":
                    return self._delete(group, name)
            operation = re.fullmatch(
                rf"/subscriptions/{sub}{compute}/locations/([^/]+)/operations/([^/]+)",
                path,
                re.IGNORECASE,
            )
            if operation is not None and method == "GET":
                return self._operation(operation.group(2))
            if re.fullmatch(rf"/subscriptions/{sub}{compute}/skus", path) and method == "GET":
                return self._skus(query)
            return 404, _error("NotFound", f"no route for {method} {path}"), {}

    def _put(self, group: str, name: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        size = body["properties"]["hardwareProfile"]["vmSize"]
        region = body["location"]
        exhausted = self._exhausted.get((size, region))
        if exhausted is not None and exhausted.in_answer:
            message = _SYNC_MESSAGES.get(exhausted.code, "{size} unavailable in {region}")
            return 409, _error(exhausted.code, message.format(size=size, region=region)), {}
        stored = {
            **body,
            "id": path,
            "name": name,
            "type": "Microsoft.Compute/virtualMachines",
            "properties": {
                **body["properties"],
                "provisioningState": "Creating",
                "vmId": f"00000000-0000-0000-0000-{self._next_id():012d}",
                "timeCreated": datetime.now(UTC).isoformat(),
            },
            "_power": "starting",
        }
        self.vms[(group, name.lower())] = stored
        if exhausted is not None:
            stored["properties"]["provisioningState"] = "Failed"
            stored["_power"] = "deallocated"
            error = {"code": exhausted.code, "message": _ASYNC_MESSAGE}
            return self._start_operation(region, 201, _public(stored), "Failed", error)
        answer = _public(stored)  # "Creating" in the answer; done when the operation is
        stored["properties"]["provisioningState"] = "Succeeded"
        return self._start_operation(region, 201, answer)

    def _get(
        self, group: str, name: str, query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        stored = self.vms.get((group, name.lower()))
        if stored is None:
            return 404, _error("ResourceNotFound", f"virtualMachines/{name} not found"), {}
        return 200, _public(stored, expand="instanceView" in query.get("$expand", [])), {}

    def _list(self, group: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        expand = "instanceView" in query.get("$expand", [])
        value = [
            _public(vm, expand=expand) for (g, _), vm in sorted(self.vms.items()) if g == group
        ]
        return 200, {"value": value}, {}

    def _delete(self, group: str, name: str) -> tuple[int, Any, dict[str, str]]:
        stored = self.vms.pop((group, name.lower()), None)
        if stored is None:
            return 204, None, {}
        return self._start_operation(stored["location"], 202, None)

    def _operation(self, operation_id: str) -> tuple[int, Any, dict[str, str]]:
        found = self.operations.get(operation_id)
        if found is None:
            return 404, _error("NotFound", f"operation {operation_id}"), {}
        return 200, found, {}

    def _skus(self, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        wanted = re.fullmatch(r"location eq '([^']*)'", (query.get("$filter") or [""])[0])
        if wanted is None:
            return 400, _error("InvalidFilter", "expected location eq '<region>'"), {}
        region = wanted.group(1)
        value = [
            {
                "resourceType": "virtualMachines",
                "name": size,
                "tier": "Standard",
                "size": size.removeprefix("Standard_"),
                "locations": [region],
                "capabilities": [{"name": "GPUs", "value": str(gpus)}] if gpus else [],
                "restrictions": [],
            }
            for size, gpus in SKUS.items()
        ]
        return 200, {"value": value}, {}

    def _start_operation(
        self,
        region: str,
        status: int,
        body: Any,
        outcome: str = "Succeeded",
        error: dict[str, Any] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        operation_id = f"op-{self._next_id()}"
        record: dict[str, Any] = {
            "name": operation_id,
            "status": outcome,
            "startTime": datetime.now(UTC).isoformat(),
        }
        if error is not None:
            record["error"] = error
        self.operations[operation_id] = record
        url = (
            f"{self.base_url}/subscriptions/{self.subscription_id}/providers/Microsoft.Compute"
            f"/locations/{region}/operations/{operation_id}?api-version=2024-07-01"
        )
        return status, body, {"Azure-AsyncOperation": url, "Retry-After": "0"}

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids


def _public(stored: dict[str, Any], *, expand: bool = False) -> dict[str, Any]:
    """The VM as ARM answers it (instance view only when expanded)."""
    vm = {key: value for key, value in stored.items() if not key.startswith("_")}
    vm["properties"] = dict(stored["properties"])
    if expand:
        provisioning = stored["properties"]["provisioningState"].lower()
        vm["properties"]["instanceView"] = {
            "statuses": [
                {"code": f"ProvisioningState/{provisioning}", "level": "Info"},
                {"code": f"PowerState/{stored['_power']}", "level": "Info"},
            ]
        }
    return vm


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        fake: FakeAzureVms = self.server.fake  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        status, answer, headers = fake.answer(
            self.command, split.path, parse_qs(split.query), body, self.headers
        )
        data = b"" if answer is None else json.dumps(answer).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    do_GET = _handle
    do_PUT = _handle
    do_DELETE = _handle
