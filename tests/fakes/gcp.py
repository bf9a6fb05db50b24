"""A local fake of the two Google APIs the GCP adapter reads, on 127.0.0.1.

* Compute Engine REST (``/compute/v1/projects/{project}/...``): ``regions`` (with
  ``quotas``), ``aggregated/machineTypes``, ``zones/{zone}/machineTypes``,
  ``aggregated/acceleratorTypes`` and ``zones/{zone}/acceleratorTypes``, paged with
  ``maxResults``/``pageToken`` like the real service;
* Cloud Billing Catalog (``/v1/services/{service}/skus``), paged with
  ``pageSize``/``pageToken``, answering only requests that carry the fake's API key.

The real ``google-cloud-compute`` client talks to it with
``ClientOptions(api_endpoint=fake.url)`` and ``AnonymousCredentials``; httpx talks to
it with ``base_url=fake.url``. Knobs inject what the real services do on a bad day:
``fail`` (an HTTP error with a Google error body), ``stall`` (answer late, to trip a
client timeout), ``reply_raw`` (a malformed body) and ``page_size`` (force paging).
Every request is recorded in ``requests``.

Use it as a context manager so the server thread and its sockets are closed::

    with FakeGcp.from_fixtures() as fake:
        ...
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "gcp"

PROJECT = "arbiter-test"
API_KEY = "fake-billing-key"
COMPUTE_SERVICE = "6F81-5844-456A"

ROUTES = ("regions", "machine_types", "accelerator_types", "skus")

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def google_error(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """A Google API error body as Compute Engine and the Billing API send it."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if reason:
        error["errors"] = [{"message": message, "domain": "global", "reason": reason}]
    return {"error": error}


@dataclass(frozen=True)
class RecordedRequest:
    route: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class _Script:
    """One scripted answer: after ``delay`` seconds, either the normal answer
    (``status is None``) or ``status`` with ``body`` and ``headers``."""

    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeGcp:
    """Compute Engine + Cloud Billing Catalog fake on a free loopback port."""

    def __init__(
        self,
        *,
        regions: list[dict[str, Any]] | None = None,
        machine_types: dict[str, list[dict[str, Any]]] | None = None,
        accelerator_types: dict[str, list[dict[str, Any]]] | None = None,
        skus: list[dict[str, Any]] | None = None,
        project: str = PROJECT,
        api_key: str = API_KEY,
    ) -> None:
        self.project = project
        self.api_key = api_key
        self.regions: list[dict[str, Any]] = list(regions or [])
        self.machine_types: dict[str, list[dict[str, Any]]] = dict(machine_types or {})
        """Zone name -> MachineType objects (an empty list is a zone with none)."""
        self.accelerator_types: dict[str, list[dict[str, Any]]] = dict(accelerator_types or {})
        self.skus: list[dict[str, Any]] = list(skus or [])
        self.page_size: dict[str, int] = {}
        """Route -> items per page (for aggregated lists: zones per page). Unset: the
        client's ``maxResults``/``pageSize``, else everything on one page."""
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[_Script]] = {route: deque() for route in ROUTES}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_fixtures(cls, **kwargs: Any) -> FakeGcp:
        """A fake serving the JSON fixtures in ``tests/data/gcp``."""

        def load(name: str) -> Any:
            return json.loads((FIXTURES / name).read_text())

        return cls(
            regions=load("compute_regions.json")["items"],
            machine_types=load("compute_machine_types.json"),
            accelerator_types=load("compute_accelerator_types.json"),
            skus=load("billing_skus.json")["skus"],
            **kwargs,
        )

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> FakeGcp:
        handler = type("Handler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # Join handler threads on close, so none outlives the test.
        server.daemon_threads = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits up to one poll
            name="fake-gcp",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # wake stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeGcp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- knobs --------------------------------------------------------------------

    def fail(
        self,
        route: str,
        status: int,
        *,
        times: int = 1,
        reason: str | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests on ``route`` with ``status`` and a
        Google error body (``reason`` goes into ``error.errors[0].reason``)."""
        body = json.dumps(google_error(status, message or f"injected {status}", reason)).encode()
        for _ in range(times):
            self._script(route, _Script(status=status, body=body, headers=dict(headers or {})))

    def stall(self, route: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next ``times`` requests on ``route`` only after ``seconds``."""
        for _ in range(times):
            self._script(route, _Script(delay=seconds))

    def reply_raw(
        self, route: str, body: bytes | str, *, status: int = 200, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests on ``route`` with exactly ``body``."""
        raw = body.encode() if isinstance(body, str) else body
        for _ in range(times):
            self._script(route, _Script(status=status, body=raw))

    def requests_to(self, route: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def _script(self, route: str, script: _Script) -> None:
        if route not in self._scripts:
            raise ValueError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")
        with self._lock:
            self._scripts[route].append(script)

    def _next_script(self, route: str) -> _Script | None:
        with self._lock:
            queue = self._scripts[route]
            return queue.popleft() if queue else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- answers ------------------------------------------------------------------

    def _page(
        self, route: str, items: list[Any], query: dict[str, list[str]], size_key: str
    ) -> tuple[list[Any], str | None]:
        start = int(query.get("pageToken", ["0"])[0] or 0)
        size = self.page_size.get(route) or int(query.get(size_key, ["0"])[0] or 0) or len(items)
        end = start + max(size, 1)
        token = str(end) if end < len(items) else None
        return items[start:end], token

    def answer(
        self,
        route: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        params: dict[str, str],
    ) -> tuple[int, Any]:
        if route == "skus":
            return self._answer_skus(query, headers)
        if params["project"] != self.project:
            return 404, google_error(
                404, f"The resource 'projects/{params['project']}' was not found", "notFound"
            )
        if route == "regions":
            page, token = self._page(route, self.regions, query, "maxResults")
            return 200, _with_token({"kind": "compute#regionList", "items": page}, token)
        if route == "region":
            for region in self.regions:
                if region["name"] == params["region"]:
                    return 200, region
            return 404, google_error(
                404, f"The resource 'regions/{params['region']}' was not found", "notFound"
            )
        if route == "machine_types":
            return 200, self._aggregated(
                route,
                self.machine_types,
                "machineTypes",
                "compute#machineTypeAggregatedList",
                query,
            )
        if route == "accelerator_types":
            return 200, self._aggregated(
                route,
                self.accelerator_types,
                "acceleratorTypes",
                "compute#acceleratorTypeAggregatedList",
                query,
            )
        if route in ("zone_machine_types", "zone_accelerator_types"):
            source = self.machine_types if route == "zone_machine_types" else self.accelerator_types
            items = source.get(params["zone"], [])
            page, token = self._page(route, items, query, "maxResults")
            return 200, _with_token({"items": page}, token)
        return 404, google_error(404, f"not found: {path}", "notFound")

    def _aggregated(
        self,
        route: str,
        by_zone: dict[str, list[dict[str, Any]]],
        field_name: str,
        kind: str,
        query: dict[str, list[str]],
    ) -> dict[str, Any]:
        zones, token = self._page(route, sorted(by_zone), query, "maxResults")
        items: dict[str, Any] = {}
        for zone in zones:
            if by_zone[zone]:
                items[f"zones/{zone}"] = {field_name: by_zone[zone]}
            else:
                items[f"zones/{zone}"] = {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope 'zones/{zone}' on this page.",
                        "data": [{"key": "scope", "value": f"zones/{zone}"}],
                    }
                }
        return _with_token({"kind": kind, "items": items}, token)

    def _answer_skus(self, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, Any]:
        key = headers.get("x-goog-api-key") or query.get("key", [""])[0]
        if not key:
            return 403, google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
                "forbidden",
            )
        if key != self.api_key:
            body = google_error(
                400, "API key not valid. Please pass a valid API key.", "badRequest"
            )
            body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "cloudbilling.googleapis.com"},
                }
            ]
            return 400, body
        page, token = self._page("skus", self.skus, query, "pageSize")
        return 200, _with_token({"skus": page}, token)


def _with_token(body: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token:
        body["nextPageToken"] = token
    return body


def _route(path: str) -> tuple[str, dict[str, str]] | None:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["v1", "services"] and len(parts) == 4 and parts[3] == "skus":
        return "skus", {"service": parts[2]}
    if parts[:3] != ["compute", "v1", "projects"] or len(parts) < 5:
        return None
    project, rest = parts[3], parts[4:]
    params = {"project": project}
    if rest == ["regions"]:
        return "regions", params
    if len(rest) == 2 and rest[0] == "regions":
        return "region", {**params, "region": rest[1]}
    if rest == ["aggregated", "machineTypes"]:
        return "machine_types", params
    if rest == ["aggregated", "acceleratorTypes"]:
        return "accelerator_types", params
    if len(rest) == 3 and rest[0] == "zones" and rest[2] == "machineTypes":
        return "zone_machine_types", {**params, "zone": rest[1]}
    if len(rest) == 3 and rest[0] == "zones" and rest[2] == "acceleratorTypes":
        return "zone_accelerator_types", {**params, "zone": rest[1]}
    return None


# Knobs address these routes; per-zone and single-region reads share their knobs.
_KNOB_ROUTE = {
    "region": "regions",
    "zone_machine_types": "machine_types",
    "zone_accelerator_types": "accelerator_types",
}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGcp
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        routed = _route(split.path)
        route, params = routed if routed else ("unknown", {})
        knob = _KNOB_ROUTE.get(route, route)
        self.fake._record(RecordedRequest(knob, split.path, query, headers))
        script = self.fake._next_script(knob) if knob in ROUTES else None
        if script is not None and script.delay:
            self.fake._stop.wait(script.delay)
        if script is not None and script.status is not None:
            self._send(script.status, script.body, script.headers)
            return
        if routed is None:
            status, body = 404, google_error(404, f"not found: {split.path}", "notFound")
        else:
            status, body = self.fake.answer(route, split.path, query, headers, params)
        self._send(status, json.dumps(body).encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer
