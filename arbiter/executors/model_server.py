"""A stand-in inference replica: a small OpenAI-compatible HTTP server on loopback.

The local executor runs one of these per replica, so a migration can be watched end
to end on one machine. It answers like a model server would, only faster and with a
fixed answer that names where it runs::

    python -m arbiter.executors.model_server --port 9001 --region us-east4 \\
        --warmup-seconds 2 --latency-ms 20

Endpoints:

* ``GET /healthz`` — 503 while warming up (the first ``--warmup-seconds``), then 200.
* ``GET /v1/models`` — the one model it serves.
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` — after ``--latency-ms``,
  a deterministic completion naming the replica's region and offer (also in the
  ``X-Arbiter-Region``, ``X-Arbiter-Offer`` and ``X-Arbiter-Replica`` headers);
  503 while warming up.
* ``GET /inflight`` — ``{"in_flight": N, "served": M, ...}``: completion requests
  being served now and served so far (what the executor sums to tell a drain's end).
* ``GET /metrics`` — the same two numbers in Prometheus text format.

SIGTERM (or SIGINT) drains: the server stops accepting connections, finishes the
requests it has accepted, and exits 0. It binds 127.0.0.1 only and imports nothing
outside the standard library, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
MODEL = "arbiter-stand-in"


@dataclass(frozen=True)
class ReplicaIdentity:
    """What a replica says about itself in every answer."""

    region: str
    offer: str
    workload: str
    group: str
    warmup_seconds: float
    latency_ms: float


class ReplicaServer(ThreadingHTTPServer):
    """One replica. Handler threads are joined on close, so a drain finishes them."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, port: int, identity: ReplicaIdentity) -> None:
        self.identity = identity
        self.started = time.monotonic()
        self.counter_lock = threading.Lock()
        self.in_flight = 0
        self.served = 0
        super().__init__((HOST, port), ReplicaHandler)

    @property
    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.identity.warmup_seconds


class ReplicaHandler(BaseHTTPRequestHandler):
    server: ReplicaServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles at drain
    server_version = "arbiter-model-server/1"
    timeout = 30  # a client that connects and sends nothing does not hold a drain forever

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the replica's log

    # -- routing ---------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            if self.server.ready:
                self._json(200, {"status": "ok"})
            else:
                self._json(503, {"status": "warming up"})
        elif path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": MODEL, "object": "model", "owned_by": "arbiter"}],
                },
            )
        elif path == "/inflight":
            with self.server.counter_lock:
                counts = {"in_flight": self.server.in_flight, "served": self.server.served}
            self._json(200, {**counts, "pid": os.getpid(), "ready": self.server.ready})
        elif path == "/metrics":
            with self.server.counter_lock:
                in_flight, served = self.server.in_flight, self.server.served
            text = (
                "# HELP arbiter_replica_in_flight Completion requests being served.\n"
                "# TYPE arbiter_replica_in_flight gauge\n"
                f"arbiter_replica_in_flight {in_flight}\n"
                "# HELP arbiter_replica_requests_total Completion requests served.\n"
                "# TYPE arbiter_replica_requests_total counter\n"
                f"arbiter_replica_requests_total {served}\n"
            )
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        else:
            self._error(404, f"no route for GET {path}", "not_found")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._error(404, f"no route for POST {path}", "not_found")
            return
        with self.server.counter_lock:
            self.server.in_flight += 1
        try:
            self._complete(path)
        finally:
            with self.server.counter_lock:
                self.server.in_flight -= 1
                self.server.served += 1

    def _complete(self, path: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._error(400, f"invalid JSON body: {exc}", "invalid_request_error")
            return
        if not self.server.ready:
            self._error(503, "replica is warming up", "unavailable")
            return
        time.sleep(self.server.identity.latency_ms / 1000)
        who = self.server.identity
        text = f"Hello from {who.region} ({who.offer})."
        digest = hashlib.sha256(raw + who.offer.encode()).hexdigest()[:24]
        model = body.get("model") if isinstance(body.get("model"), str) else MODEL
        usage = {"prompt_tokens": len(raw.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common = {"created": int(time.time()), "model": model, "usage": usage}
        common["arbiter"] = {
            "region": who.region,
            "offer": who.offer,
            "workload": who.workload,
            "group": who.group,
            "replica": self._replica_name(),
        }
        if path == "/v1/chat/completions":
            answer = {
                "id": f"chatcmpl-{digest}",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                **common,
            }
        else:
            answer = {
                "id": f"cmpl-{digest}",
                "object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                **common,
            }
        self._json(200, answer)

    # -- answering -------------------------------------------------------------------

    def _replica_name(self) -> str:
        return f"{HOST}:{self.server.server_address[1]}"

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(status, {"error": {"message": message, "type": kind}})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        who = self.server.identity
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Arbiter-Region", who.region)
        self.send_header("X-Arbiter-Offer", who.offer)
        self.send_header("X-Arbiter-Replica", self._replica_name())
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)


def serve(port: int, identity: ReplicaIdentity) -> int:
    """Serve until SIGTERM/SIGINT, then drain (finish accepted requests) and return 0."""
    server = ReplicaServer(port, identity)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    loop = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="accept"
    )
    loop.start()
    print(
        f"model_server: serving {identity.group or identity.offer} on {HOST}:{port} "
        f"(region {identity.region}, warm-up {identity.warmup_seconds}s, "
        f"latency {identity.latency_ms}ms, pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(0.2):
        pass
    server.shutdown()  # no new connections are accepted after this returns
    with server.counter_lock:
        left = server.in_flight
    print(f"model_server: draining, {left} request(s) in flight", file=sys.stderr, flush=True)
    server.server_close()  # closes the socket and joins the handler threads
    loop.join()
    print(f"model_server: drained after {server.served} request(s)", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m arbiter.executors.model_server",
        description="A stand-in OpenAI-compatible inference replica on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--offer", default="", help="the offer key it stands in for")
    parser.add_argument("--workload", default="")
    parser.add_argument("--group", default="", help="the replica group id")
    parser.add_argument("--warmup-seconds", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--owner", default="", help="the executor state directory that owns this replica"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if args.warmup_seconds < 0 or args.latency_ms < 0:
        parser.error("--warmup-seconds and --latency-ms must not be negative")
    identity = ReplicaIdentity(
        region=args.region,
        offer=args.offer or args.region,
        workload=args.workload,
        group=args.group,
        warmup_seconds=args.warmup_seconds,
        latency_ms=args.latency_ms,
    )
    try:
        return serve(args.port, identity)
    except OSError as exc:
        print(f"model_server: cannot serve on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
