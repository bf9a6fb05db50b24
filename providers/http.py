"""What every httpx-based adapter shares: a client with timeouts and a user agent, and
the translation of HTTP failures into arbiter's exception tree.

* 429 → Throttled (with ``Retry-After`` seconds when given); 5xx, timeouts and
  connection errors → Unavailable — both temporary, retried by the poller;
* 401/403 → AuthFailed; any other 4xx, a body that is not JSON, or JSON of the wrong
  shape → BadPayload — not retried.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

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
