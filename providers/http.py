"""What every httpx-based adapter shares: a client with timeouts and a user agent, and
the translation of HTTP failures into arbiter's exception tree.

* 429 → Throttled (with ``Retry-After`` seconds when given); 5xx, timeouts and
  connection errors → Unavailable — both temporary, retried by the poller;
* 401/403 → AuthFailed; any other 4xx, a body that is not JSON, or JSON of the wrong
  shape → BadPayload — not retried.

Error messages quote a failed response's body only as :func:`response_detail` gives it:
some servers echo back the credentials they were sent (a token, or the base64 of
``user:password`` from a URL), so every credential the request carried is masked, and a
refused request (401/403) is described by the API's own short message at most, never by
its raw body.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from arbiter.errors import AuthFailed, BadPayload, Throttled, Unavailable
from arbiter.logs import mask_secrets_in_text

USER_AGENT = "arbiter/0.1 (+https://github.com/arbiter)"

MAX_DETAIL_CHARS = 200
"""How much of a failed response's body an error message quotes."""

_CREDENTIAL_NAME = re.compile(
    r"auth|token|key|secret|passw|credential|cookie|session|signature|sig$", re.I
)
"""Headers and query parameters whose values are credentials (``Authorization``,
``auth-token``, ``X-Goog-Api-Key``, ``?key=``, ...)."""
_MIN_CREDENTIAL_CHARS = 4
"""Shorter values are not masked: replacing every "abc" in a message would garble it."""
_MESSAGE_KEYS = ("message", "error_description", "detail", "error", "title")


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


def request_credentials(request: httpx.Request) -> set[str]:
    """Every credential ``request`` carried: the values of credential headers (and the
    part after ``Basic``/``Bearer``), the ``user:password`` and password inside a Basic
    header, the password of the URL's userinfo, and credential query parameters."""
    found: set[str] = set()
    for name, value in request.headers.items():
        if not _CREDENTIAL_NAME.search(name):
            continue
        found.add(value)
        scheme, _, token = value.partition(" ")
        token = token.strip()
        found.add(token)
        if scheme.lower() == "basic" and token:
            try:
                pair = base64.b64decode(token, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                continue
            found.update((pair, pair.partition(":")[2]))
    url = request.url
    if url.password:
        found.update((url.password, url.userinfo.decode("ascii", "replace").partition(":")[2]))
    for name, value in url.params.multi_items():
        if _CREDENTIAL_NAME.search(name):
            found.add(value)
    return {c for c in found if len(c) >= _MIN_CREDENTIAL_CHARS}


def mask_credentials(
    text: str, credentials: Iterable[str], *, limit: int = MAX_DETAIL_CHARS
) -> str:
    """``text`` on one line, at most ``limit`` characters, with every credential masked
    as ``***`` — also percent-encoded or JSON-escaped, and passwords in URLs — before it
    is cut (a cut must not leave half a credential behind)."""
    forms: set[str] = set()
    for credential in credentials:
        forms.update((credential, quote(credential, safe=""), credential.replace("/", "\\/")))
    longest = max((len(f) for f in forms), default=0)
    text = text[: 16 * limit + longest]
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    text = " ".join(mask_secrets_in_text(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _api_message(response: httpx.Response) -> str | None:
    """The API's own error message in a JSON body (``message``, ``error``,
    ``error.message``, ...), if there is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    for candidate in (body, body.get("error") if isinstance(body, dict) else None):
        if isinstance(candidate, dict):
            for key in _MESSAGE_KEYS:
                if isinstance(candidate.get(key), str) and candidate[key].strip():
                    return str(candidate[key])
    return None


def response_detail(response: httpx.Response) -> str:
    """What a failed response says, for an error message, with every credential the
    request carried masked: the start of the body, or for a refused request (401/403)
    only the API's own error message from a JSON body (else nothing) — the raw body of a
    refusal is where servers echo back the credentials they were sent."""
    credentials = request_credentials(response.request)
    if response.status_code in (401, 403):
        message = _api_message(response)
        return mask_credentials(message, credentials) if message else ""
    return mask_credentials(response.text, credentials)


def check_response(response: httpx.Response, *, source: str) -> None:
    """Raise the project's error for a failed response; return for 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = response_detail(response)
    where = f"{response.request.method} {response.request.url.path}: HTTP {status}"
    if status == 429:
        raise Throttled(
            f"{where} (throttled)",
            source=source,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        because = f": {detail}" if detail else ""
        if not detail and response.reason_phrase:
            because = f" ({response.reason_phrase})"
        raise AuthFailed(f"{where}: credentials refused{because}", source=source)
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
