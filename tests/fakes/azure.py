"""A local fake of the two Azure APIs the Azure adapter calls, on 127.0.0.1.

One ``ThreadingHTTPServer`` on a free port, in a daemon thread, serves:

* ARM ``GET /subscriptions/{sub}/providers/Microsoft.Compute/skus`` (with
  ``$filter=location eq '<region>'``) and
  ``GET /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/usages``, paged
  with absolute ``http://`` ``nextLink`` URLs as the SDK follows them verbatim. ARM
  routes answer 401 without a ``Bearer`` token, like ARM;
* the Retail Prices API ``GET /api/retail/prices`` (``api-version`` and ``$filter``
  checked), paged with an absolute ``NextPageLink`` (``$skip``) until it is null. It
  serves a region's items as stored: it applies no ``priceType`` or SKU filtering, so
  the adapter's own filters are what the tests exercise.

Knobs: ``script(route, Reply(...))`` queues one-shot replies for a route (``"skus"``,
``"usages"`` or ``"prices"``) that are served, in order, before the normal answer;
``throttle``, ``fail``, ``malformed`` and ``stall`` are shorthands. Every request is
recorded in ``requests``. Use it as a context manager so the socket is closed.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RETAIL_API_VERSION = "2023-01-01-preview"
_RETAIL_FILTER = re.compile(
    r"^serviceName eq 'Virtual Machines' and armRegionName eq '([^']*)' "
    r"and priceType eq 'Consumption'$"
)
_LOCATION_FILTER = re.compile(r"^location eq '([^']*)'$")


@dataclass(frozen=True)
class Reply:
    """A scripted answer. ``body=None`` means the route's normal answer, after ``delay``."""

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Seen:
    """A request the fake received."""

    route: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class FakeAzure:
    """ARM (resource SKUs, usages) and the Retail Prices API on one loopback server.

    Fill ``skus``, ``usages`` and ``prices`` (region -> list of wire-format JSON objects)
    before calling the adapter.
    """

    def __init__(
        self,
        *,
        subscription_id: str = SUBSCRIPTION,
        sku_page_size: int = 100,
        price_page_size: int = 1000,
    ) -> None:
        self.subscription_id = subscription_id
        self.skus: dict[str, list[dict[str, Any]]] = {}
        self.usages: dict[str, list[dict[str, Any]]] = {}
        self.prices: dict[str, list[dict[str, Any]]] = {}
        self.sku_page_size = sku_page_size
        self.price_page_size = price_page_size
        self.requests: list[Seen] = []
        self._scripted: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits up to one interval
            name="fake-azure",
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> FakeAzure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()  # wakes stalled handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def retail_prices_url(self) -> str:
        return f"{self.base_url}/api/retail/prices"

    # -- knobs ---------------------------------------------------------------------

    def script(self, route: str, *replies: Reply) -> None:
        """Serve ``replies`` (in order, once each) before the normal answer of ``route``."""
        if route not in ("skus", "usages", "prices"):
            raise ValueError(f"unknown route {route!r}")
        with self._lock:
            self._scripted.setdefault(route, deque()).extend(replies)

    def throttle(self, route: str, retry_after: str = "7") -> None:
        body = _error_body("TooManyRequests", "Rate limit exceeded; retry later.")
        self.script(route, Reply(429, body, {"Retry-After": retry_after}))

    def fail(self, route: str, status: int = 500, code: str = "InternalServerError") -> None:
        self.script(route, Reply(status, _error_body(code, f"fake {status}")))

    def malformed(self, route: str, body: bytes) -> None:
        self.script(route, Reply(200, body))

    def stall(self, route: str, seconds: float) -> None:
        self.script(route, Reply(delay=seconds))

    def routes(self) -> list[str]:
        return [seen.route for seen in self.requests]

    # -- serving (called from handler threads) ---------------------------------------

    def _next_scripted(self, route: str) -> Reply | None:
        with self._lock:
            queue = self._scripted.get(route)
            return queue.popleft() if queue else None

    def _answer(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query, keep_blank_values=True)
        route, match = self._route(url.path)
        self.requests.append(
            Seen(route or "unknown", url.path, query, {k: v for k, v in handler.headers.items()})
        )
        if route is None:
            return handler.reply(404, _error_body("NotFound", f"no route for {url.path}"))
        if route != "prices" and not handler.headers.get("Authorization", "").startswith("Bearer "):
            return handler.reply(401, _error_body("AuthenticationFailed", "no bearer token"))

        scripted = self._next_scripted(route)
        if scripted is not None:
            if scripted.delay and self._closing.wait(scripted.delay):
                return None
            if scripted.body is not None:
                return handler.reply(scripted.status, scripted.body, scripted.headers)

        if route == "skus":
            return self._serve_skus(handler, query)
        if route == "usages":
            assert match is not None
            return self._serve_usages(handler, match.group(1))
        return self._serve_prices(handler, query)

    def _route(self, path: str) -> tuple[str | None, re.Match[str] | None]:
        prefix = f"/subscriptions/{self.subscription_id}/providers/Microsoft.Compute"
        if path == f"{prefix}/skus":
            return "skus", None
        usages = re.fullmatch(re.escape(prefix) + r"/locations/([^/]+)/usages", path)
        if usages:
            return "usages", usages
        if path == "/api/retail/prices":
            return "prices", None
        return None, None

    def _serve_skus(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        if "api-version" not in query:
            return handler.reply(400, _error_body("MissingApiVersionParameter", "api-version"))
        wanted = _LOCATION_FILTER.match(_one(query, "$filter"))
        if not wanted:
            return handler.reply(400, _error_body("InvalidFilter", _one(query, "$filter")))
        region = wanted.group(1)
        items = self.skus.get(region, [])
        start = int(_one(query, "$skiptoken") or 0)
        end = start + self.sku_page_size
        body: dict[str, Any] = {"value": items[start:end]}
        if end < len(items):
            params = {
                "api-version": _one(query, "api-version"),
                "$filter": _one(query, "$filter"),
                "$skiptoken": str(end),
            }
            body["nextLink"] = f"{self.base_url}{urlsplit(handler.path).path}?{urlencode(params)}"
        return handler.reply(200, json.dumps(body).encode())

    def _serve_usages(self, handler: _Handler, region: str) -> None:
        return handler.reply(200, json.dumps({"value": self.usages.get(region, [])}).encode())

    def _serve_prices(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        if _one(query, "api-version") != RETAIL_API_VERSION:
            return handler.reply(400, json.dumps({"Error": "bad api-version"}).encode())
        wanted = _RETAIL_FILTER.match(_one(query, "$filter"))
        if not wanted:
            return handler.reply(400, json.dumps({"Error": "bad $filter"}).encode())
        items = self.prices.get(wanted.group(1), [])  # values are case-sensitive
        start = int(_one(query, "$skip") or 0)
        end = start + self.price_page_size
        next_link = None
        if end < len(items):
            params = {
                "api-version": RETAIL_API_VERSION,
                "$filter": _one(query, "$filter"),
                "$skip": str(end),
            }
            next_link = f"{self.retail_prices_url}?{urlencode(params)}"
        body = {
            "BillingCurrency": "USD",
            "CustomerEntityId": "Default",
            "CustomerEntityType": "Retail",
            "Items": items[start:end],
            "NextPageLink": next_link,
            "Count": len(items[start:end]),
        }
        return handler.reply(200, json.dumps(body).encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fake: FakeAzure = self.server.fake  # type: ignore[attr-defined]
        # The client may have given up (a timeout test): nothing left to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            fake._answer(self)

    def reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key) or [""]
    return values[-1]


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
