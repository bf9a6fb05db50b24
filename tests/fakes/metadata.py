"""Local fakes of the interruption signals, on 127.0.0.1 only.

* :class:`FakeMetadata` — one HTTP server playing the three instance-metadata services
  the way they answer (paths, required headers, status codes, bodies):

  - AWS IMDSv2: ``PUT /latest/api/token`` (needs the TTL header), then
    ``GET /latest/meta-data/...`` with ``X-aws-ec2-metadata-token`` (401 with AWS's
    XHTML page otherwise); ``spot/instance-action`` and
    ``events/recommendations/rebalance`` are 404 until set;
  - GCE: ``GET /computeMetadata/v1/instance/...`` with ``Metadata-Flavor: Google``
    (403 otherwise), an ``ETag`` on every answer and ``wait_for_change=true`` honoured
    (the request waits, up to ``timeout_sec``, until the value differs from
    ``last_etag``);
  - Azure IMDS: ``GET /metadata/instance`` and ``GET``/``POST /metadata/scheduledevents``
    with ``Metadata: true`` and an ``api-version`` (400 otherwise); a POST records the
    ``StartRequests`` acknowledgements.

  :meth:`FakeMetadata.fail` scripts error answers per path prefix; ``delay`` makes every
  answer late (for timeouts). Every request is recorded in ``requests``.
* :class:`FakeNodes` — a Kubernetes API server answering ``GET /api/v1/nodes`` (bearer
  token, ``labelSelector`` with ``=``/``!=`` terms, ``limit``/``continue`` paging, scripted
  errors as ``Status`` bodies), and :func:`node` to build realistic Node objects.

The recorded bodies below are from /work/shared/reference/payloads (see its README):
the EventBridge events from aws/aws-node-termination-handler
(``pkg/monitor/sqsevent/*.go`` comment blocks, Apache-2.0), the IMDS bodies from the
EC2 user guide (CC BY-SA 4.0) and amazon-ec2-metadata-mock's golden files
(Apache-2.0), the Scheduled Events document from mspnp/interruptible-workload-on-spot
(MIT).

Use the servers as context managers so their threads and sockets are closed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

# -- recorded payloads --------------------------------------------------------------

EVENTBRIDGE_SPOT_WARNING: dict[str, Any] = {
    "version": "0",
    "id": "1e5527d7-bb36-4607-3370-4164db56a40e",
    "detail-type": "EC2 Spot Instance Interruption Warning",
    "source": "aws.ec2",
    "account": "<account_number>",
    "time": "1970-01-01T00:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1b:instance/i-0b662ef9931388ba0"],
    "detail": {"instance-id": "i-0b662ef9931388ba0", "instance-action": "terminate"},
}
EVENTBRIDGE_REBALANCE: dict[str, Any] = {
    "version": "0",
    "id": "5d5555d5-dd55-5555-5555-5555dd55d55d",
    "detail-type": "EC2 Instance Rebalance Recommendation",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2020-10-26T14:14:14Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1b:instance/i-0b662ef9931388ba0"],
    "detail": {"instance-id": "i-0b662ef9931388ba0"},
}
IMDS_INSTANCE_ACTION_TERMINATE = '{"action": "terminate", "time": "2017-09-18T08:22:00Z"}'
IMDS_INSTANCE_ACTION_STOP = '{"action": "stop", "time": "2017-09-18T08:22:00Z"}'
IMDS_REBALANCE = '{"noticeTime": "2020-10-27T08:22:00Z"}'
IMDS_401 = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
   <head>
      <title>401 - Unauthorized</title>
   </head>
   <body>
      <h1>401 - Unauthorized</h1>
   </body>
</html>
"""
IMDS_404 = """<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
	"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>404 - Not Found</title>
 </head>
 <body>
  <h1>404 - Not Found</h1>
 </body>
</html>
"""
AZURE_PREEMPT_EVENTS: dict[str, Any] = {
    "DocumentIncarnation": 1,
    "Events": [
        {
            "EventId": "C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E",
            "EventStatus": "Scheduled",
            "EventType": "Preempt",
            "ResourceType": "VirtualMachine",
            "Resources": ["vm-spot"],
            "NotBefore": "Tue, 09 Aug 2022 17:07:32 GMT",
            "Description": "",
            "EventSource": "Platform",
            "DurationInSeconds": -1,
        }
    ],
}
AZURE_NO_EVENTS: dict[str, Any] = {"DocumentIncarnation": 0, "Events": []}
AZURE_INSTANCE: dict[str, Any] = {
    "compute": {
        "location": "eastus",
        "name": "vm-spot",
        "vmSize": "Standard_NC4as_T4_v3",
        "zone": "",
        "priority": "Spot",
        "evictionPolicy": "Delete",
        "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
    },
    "network": {"interface": []},
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float
    """When it arrived (``time.perf_counter()``)."""


class _Server:
    """A threaded loopback HTTP server whose handler calls ``answer``."""

    def __init__(self, name: str) -> None:
        self.requests: list[Request] = []
        self.delay = 0.0
        """Seconds every answer waits (to test timeouts); released by stop()."""
        self._released = threading.Event()
        self._lock = threading.RLock()
        self._failures: deque[tuple[str, int, str]] = deque()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _handle(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    split.path,
                    parse_qs(split.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.perf_counter(),
                )
                with fake._lock:
                    fake.requests.append(request)
                if fake.delay:
                    fake._released.wait(fake.delay)
                status, headers, payload = fake._scripted(request) or fake.answer(request)
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout test)
                    pass

            do_GET = do_PUT = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = False  # joined on close
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=name
        )
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def fail(self, path_prefix: str, status: int, *, times: int = 1, body: str = "") -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with ``status``."""
        with self._lock:
            for _ in range(times):
                self._failures.append((path_prefix, status, body))

    def _scripted(self, request: Request) -> tuple[int, dict[str, str], bytes] | None:
        with self._lock:
            for item in list(self._failures):
                prefix, status, body = item
                if request.path.startswith(prefix):
                    self._failures.remove(item)
                    return status, {"Content-Type": "text/plain"}, body.encode()
        return None

    def paths(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _json(status: int, body: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


def _text(status: int, body: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "text/plain", **headers}, body.encode()


# -- instance metadata ------------------------------------------------------------------


class FakeMetadata(_Server):
    """AWS IMDSv2, the GCE metadata server and Azure IMDS on one loopback port."""

    def __init__(self) -> None:
        super().__init__("fake-metadata")
        # AWS
        self.aws_token = "AQAEAFakeTokenFakeToken=="
        self.aws_identity: dict[str, str] = {
            "instance-id": "i-0b662ef9931388ba0",
            "instance-type": "g5.xlarge",
            "placement/region": "us-east-1",
            "placement/availability-zone-id": "use1-az1",
            "placement/availability-zone": "us-east-1b",
        }
        self.aws_instance_action: str | None = None
        """The body of spot/instance-action; None: 404 (no notice)."""
        self.aws_rebalance: str | None = None
        self.tokens_issued = 0
        # GCE
        self.gcp_identity: dict[str, str] = {
            "name": "gpu-spot-1",
            "zone": "projects/123456789012/zones/us-central1-a",
            "machine-type": "projects/123456789012/machineTypes/g2-standard-4",
        }
        self._gcp_preempted = "FALSE"
        self._changed = threading.Condition(self._lock)
        # Azure
        self.azure_instance: Any = json.loads(json.dumps(AZURE_INSTANCE))
        self.azure_events: Any = dict(AZURE_NO_EVENTS)
        """The Scheduled Events document (a dict), or a raw str body."""
        self.acknowledged: list[Any] = []

    # -- knobs --------------------------------------------------------------------------

    def set_gcp_preempted(self, value: str) -> None:
        with self._changed:
            self._gcp_preempted = value
            self._changed.notify_all()

    def stop(self) -> None:
        self._released.set()
        with self._changed:
            self._changed.notify_all()
        super().stop()

    def expire_aws_tokens(self) -> None:
        """Every token issued so far is refused from now on (IMDS restarted)."""
        self.aws_token = f"{self.aws_token}x"

    # -- answers ------------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path.startswith("/latest/"):
            return self._aws(request)
        if request.path.startswith("/computeMetadata/"):
            return self._gcp(request)
        if request.path.startswith("/metadata/"):
            return self._azure(request)
        return _text(404, "not found")

    def _aws(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path == "/latest/api/token":
            ttl = request.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if request.method != "PUT" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return _text(400, "Bad Request")
            with self._lock:
                self.tokens_issued += 1
            return _text(200, self.aws_token)
        if request.headers.get("x-aws-ec2-metadata-token") != self.aws_token:
            return 401, {"Content-Type": "text/html"}, IMDS_401.encode()
        key = request.path.removeprefix("/latest/meta-data/")
        if key == "spot/instance-action":
            body = self.aws_instance_action
        elif key == "events/recommendations/rebalance":
            body = self.aws_rebalance
        else:
            body = self.aws_identity.get(key)
        if body is None:
            return 404, {"Content-Type": "text/html"}, IMDS_404.encode()
        return _text(200, body)

    def _gcp(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("metadata-flavor") != "Google":
            return _text(403, "Missing Metadata-Flavor:Google header.")
        key = request.path.removeprefix("/computeMetadata/v1/instance/")
        if key == "preempted":
            wait = request.query.get("wait_for_change", [""])[0] == "true"
            last = request.query.get("last_etag", [""])[0]
            timeout = float(request.query.get("timeout_sec", ["60"])[0])
            with self._changed:
                if wait:
                    self._changed.wait_for(
                        lambda: _etag(self._gcp_preempted) != last or self._released.is_set(),
                        timeout=timeout,
                    )
                value = self._gcp_preempted
            return _text(200, value, ETag=_etag(value), **{"Metadata-Flavor": "Google"})
        found = self.gcp_identity.get(key)
        if found is None:
            return _text(404, "Not Found")
        return _text(200, found, ETag=_etag(found), **{"Metadata-Flavor": "Google"})

    def _azure(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("metadata") != "true":
            return _json(400, {"error": "Bad request. Required metadata header not specified"})
        if not request.query.get("api-version"):
            return _json(400, {"error": "Bad request. api-version was not specified"})
        if request.path == "/metadata/instance" and request.method == "GET":
            return _json(200, self.azure_instance)
        if request.path == "/metadata/scheduledevents":
            if request.method == "POST":
                with self._lock:
                    self.acknowledged.append(json.loads(request.body or b"null"))
                return _text(200, "")
            if isinstance(self.azure_events, str):
                return _text(200, self.azure_events)
            return _json(200, self.azure_events)
        return _json(404, {"error": "Not found"})


def _etag(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()[:16]


# -- Kubernetes nodes -------------------------------------------------------------------

K8S_TOKEN = "fake-nodes-token"


def node(
    name: str,
    *,
    provider_id: str,
    labels: Mapping[str, str],
    taints: Sequence[Mapping[str, Any]] = (),
    conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A Node object as the API server returns it (only the fields that matter here)."""
    ready = {
        "type": "Ready",
        "status": "True",
        "lastHeartbeatTime": "2026-11-22T11:59:00Z",
        "lastTransitionTime": "2026-11-22T08:00:00Z",
        "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
    }
    return {
        "metadata": {
            "name": name,
            "uid": hashlib.sha1(name.encode()).hexdigest(),
            "resourceVersion": "1",
            "creationTimestamp": "2026-11-22T08:00:00Z",
            "labels": {"kubernetes.io/hostname": name, **labels},
        },
        "spec": {"providerID": provider_id, "taints": [dict(t) for t in taints]},
        "status": {"conditions": [ready, *[dict(c) for c in conditions]]},
    }


def _selects(labels: Mapping[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.strip() not in labels:
            return False
    return True


class FakeNodes(_Server):
    """A Kubernetes API server that lists ``nodes``."""

    def __init__(self, token: str = K8S_TOKEN) -> None:
        super().__init__("fake-nodes")
        self.token = token
        self.nodes: list[dict[str, Any]] = []

    def answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _json(401, _status(401, "Unauthorized", "Unauthorized"))
        if request.path != "/api/v1/nodes" or request.method != "GET":
            return _json(404, _status(404, "NotFound", "the server could not find the resource"))
        selector = request.query.get("labelSelector", [""])[0]
        with self._lock:
            items = [n for n in self.nodes if _selects(n["metadata"]["labels"], selector)]
        start = int(request.query.get("continue", ["0"])[0] or 0)
        limit = int(request.query.get("limit", ["0"])[0] or 0) or len(items) or 1
        page = items[start : start + limit]
        more = start + limit < len(items)
        return _json(
            200,
            {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {
                    "resourceVersion": "42",
                    **({"continue": str(start + limit)} if more else {}),
                },
                "items": page,
            },
        )

    def _scripted(self, request: Request) -> tuple[int, dict[str, str], bytes] | None:
        scripted = super()._scripted(request)
        if scripted is None:
            return None
        status, _headers, body = scripted
        reason = {429: "TooManyRequests", 403: "Forbidden", 500: "InternalError"}.get(status, "")
        extra = {"Retry-After": "3"} if status == 429 else {}
        return _json(status, _status(status, reason, body.decode() or reason), **extra)

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "arbiter", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "arbiter"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def wait_until(predicate: Any, *, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
