"""What the on-instance sources share: an HTTP client for a cloud's instance metadata
endpoint (``169.254.169.254``, ``metadata.google.internal``), and the translation of
its failures into arbiter's exception tree (via :mod:`providers.http`):

* timeouts and connection errors, and 5xx → ``Unavailable`` (temporary);
* 429 → ``Throttled``; 401/403 → ``AuthFailed``; any other 4xx, or a body of the
  wrong shape → ``BadPayload`` naming the path.

The client never uses a proxy from the environment (``HTTP_PROXY`` and friends): a
metadata endpoint is reachable only from the instance itself.
"""

from __future__ import annotations

import math
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator

from arbiter.errors import BadPayload
from providers.http import USER_AGENT, check_response, translate_transport_errors


def metadata_url(value: str) -> str:
    """The base URL of a metadata endpoint: http(s), a host, no path."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a URL like 'http://169.254.169.254', got {value!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"give the endpoint's base URL, without a path: {value!r}")
    return value.rstrip("/")


MetadataUrl = Annotated[str, AfterValidator(metadata_url)]


def positive_seconds(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number of seconds")
    return value


PositiveSeconds = Annotated[float, AfterValidator(positive_seconds)]


class MetadataClient:
    """One metadata endpoint; every failure is raised as a ProviderError of ``source``."""

    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        timeout: float,
        headers: dict[str, str],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.source = source
        self.base_url = base_url
        self._client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": USER_AGENT, **headers},
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    def request(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response | None:
        """The response of a 2xx answer; None for a 404 when ``missing_ok``."""
        with translate_transport_errors(self.source):
            response = self._client.request(method, path, **kwargs)
        if missing_ok and response.status_code == 404:
            return None
        check_response(response, source=self.source)
        return response

    def text(self, path: str, **kwargs: Any) -> str:
        """The body of a GET as stripped text; an empty body is a BadPayload."""
        response = self.request("GET", path, **kwargs)
        assert response is not None
        text = response.text.strip()
        if not text:
            raise BadPayload("empty answer", source=self.source, field=path)
        return text

    def json(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise BadPayload("body is not JSON", source=self.source, field=path) from exc

    def close(self) -> None:
        self._client.close()
