"""What every httpx-based adapter shares: a client with timeouts and a user agent, and
the translation of HTTP failures into arbiter's exception tree.

* 429 → Throttled (with ``Retry-After`` seconds when given); 5xx, timeouts and
  connection errors → Unavailable — both temporary, retried by the poller;
* 401/403 → AuthFailed; any other 4xx, a body that is not JSON, or JSON of the wrong
  shape → BadPayload — not retried.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from arbiter.errors import AuthFailed, BadPayload, Throttled, Unavailable

USER_AGENT = "arbiter/0.1 (+https://github.com/arbiter)"


def make_client(
    base_url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
        transport=transport,
    )


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def check_response(response: httpx.Response, *, source: str) -> None:
    """Raise the project's error for a failed response; return for 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = response.text[:200].strip().replace("\n", " ")
    where = f"{response.request.method} {response.request.url.path}: HTTP {status}"
    if status == 429:
        raise Throttled(
            f"{where} (throttled)",
            source=source,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        raise AuthFailed(f"{where}: credentials refused: {detail}", source=source)
    if status >= 500:
        raise Unavailable(f"{where}: {detail}", source=source)
    raise BadPayload(f"{where}: {detail}", source=source)


@contextmanager
def translate_transport_errors(source: str) -> Iterator[None]:
    """Timeouts and connection failures become Unavailable (temporary)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise Unavailable(f"timed out: {exc.__class__.__name__}", source=source) from exc
    except httpx.TransportError as exc:
        raise Unavailable(f"connection failed: {exc}", source=source) from exc


def get_json(client: httpx.Client, url: str, *, source: str, **kwargs: Any) -> Any:
    """GET and decode JSON, translating every failure."""
    with translate_transport_errors(source):
        response = client.get(url, **kwargs)
    check_response(response, source=source)
    try:
        return response.json()
    except ValueError as exc:
        raise BadPayload(
            f"GET {response.request.url.path}: body is not JSON", source=source
        ) from exc


def require(
    mapping: Any, key: str, *, source: str, where: str, kind: type | tuple[type, ...] = object
) -> Any:
    """``mapping[key]``, or BadPayload naming ``where.key`` if missing or of the wrong type."""
    if not isinstance(mapping, dict):
        raise BadPayload(
            f"expected an object, got {type(mapping).__name__}", source=source, field=where
        )
    if key not in mapping or mapping[key] is None:
        raise BadPayload("missing", source=source, field=f"{where}.{key}" if where else key)
    value = mapping[key]
    if kind is not object and not isinstance(value, kind):
        raise BadPayload(
            f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}",
            source=source,
            field=f"{where}.{key}" if where else key,
        )
    return value


class BodyReader:
    """Reads one response body; every BadPayload names the request and the field."""

    def __init__(self, source: str, request: str) -> None:
        self.source = source
        self.request = request

    def fail(self, message: str, field: str) -> NoReturn:
        raise BadPayload(f"{self.request}: {message}", source=self.source, field=field)

    @staticmethod
    def _path(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"expected an object, got {type(value).__name__}", where or "(body)")
        return value

    def field(self, obj: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
        value = obj.get(key)
        if value is None:
            self.fail("missing", self._path(where, key))
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(
                f"expected {kind.__name__}, got {type(value).__name__}", self._path(where, key)
            )
        return value

    def number(self, obj: dict[str, Any], key: str, where: str = "") -> float:
        value = obj.get(key)
        if value is None:
            self.fail("missing", self._path(where, key))
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"expected a number, got {type(value).__name__}", self._path(where, key))
        if not math.isfinite(value) or value < 0:
            self.fail(f"expected a finite number ≥ 0, got {value!r}", self._path(where, key))
        return float(value)

    def time(self, obj: dict[str, Any], key: str, where: str = "") -> datetime:
        text = self.field(obj, key, str, where)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"not an ISO 8601 time: {text!r}", self._path(where, key))
        if value.tzinfo is None:
            self.fail(f"time without a timezone: {text!r}", self._path(where, key))
        return value
