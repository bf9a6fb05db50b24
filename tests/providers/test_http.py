"""``providers/http.py``: how a failed response becomes an error, and what of its body the
message may show — never a credential the request carried, however the server echoes
it back."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
import pytest

from arbiter.errors import AuthFailed, BadPayload, ProviderError, Unavailable
from providers.http import check_response

PASSWORD = "pa/ss+w0rd"
TOKEN = "tok-Xy81-secret"
BASIC = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
BASIC_JSON_ESCAPED = BASIC.replace("/", "\\/")


def raised(
    status: int, body: bytes | str, *, url: str = "https://api.example.com/v1/x"
) -> ProviderError:
    """The error check_response raises for a ``status`` answer with ``body`` to a GET
    of ``url`` carrying a token header (and Basic auth when ``url`` has a password)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body if isinstance(body, bytes) else body.encode())

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        response = client.get(url, headers={"auth-token": TOKEN}, params={"zone": "DE"})
    with pytest.raises(ProviderError) as caught:
        check_response(response, source="test")
    return caught.value


def failed(status: int, body: bytes | str, *, url: str = "https://api.example.com/v1/x") -> str:
    return str(raised(status, body, url=url))


def assert_no_credential(message: str) -> None:
    for secret in (PASSWORD, quote(PASSWORD, safe=""), TOKEN, BASIC):
        assert secret not in message, message


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_is_described_by_the_apis_message_with_the_credentials_it_echoes_masked(
    status: int,
) -> None:
    body = json.dumps({"message": f"invalid credentials: Basic {BASIC}, {TOKEN}"})

    message = failed(status, body, url=f"https://user:{quote(PASSWORD, safe='')}@a.example/v1")

    assert f"HTTP {status}: credentials refused: invalid credentials: ***, ***" in message
    assert_no_credential(message)


def test_the_raw_body_of_a_refusal_is_never_quoted() -> None:
    decoded = base64.b64decode(BASIC).decode()
    message = failed(401, f"<html>you sent {decoded.upper()} and {decoded[::-1]}</html>")

    assert message.endswith("GET /v1/x: HTTP 401: credentials refused (Unauthorized)")


def test_a_google_style_error_message_explains_a_refusal() -> None:
    body = {"error": {"code": 403, "message": "Billing API has not been used", "errors": []}}

    message = failed(403, json.dumps(body))

    assert message.endswith("credentials refused: Billing API has not been used")


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_other_failures_quote_the_body_with_every_credential_masked_however_encoded(
    status: int,
) -> None:
    body = (
        f"bad zone DE; token={TOKEN}; auth=Basic {BASIC}; escaped={BASIC_JSON_ESCAPED}; "
        f"url=https://user:{quote(PASSWORD, safe='')}@a.example/v1; pair=user:{PASSWORD}"
    )

    message = failed(status, body, url=f"https://user:{quote(PASSWORD, safe='')}@a.example/v1")

    masked = "token=***; auth=***; escaped=***; url=https://user:***@a.example/v1; pair=***"
    assert message.endswith(f"HTTP {status}: bad zone DE; {masked}")
    assert_no_credential(message)


def test_a_long_body_is_cut_after_masking_so_no_half_credential_is_left() -> None:
    body = "x" * 195 + TOKEN + "y" * 500

    message = failed(500, body)

    assert TOKEN[:5] not in message and "x***" in message
    assert message.endswith("…") and len(message.split("HTTP 500: ", 1)[1]) == 200


@pytest.mark.parametrize(
    ("status", "kind"), [(401, AuthFailed), (500, Unavailable), (418, BadPayload)]
)
def test_statuses_map_to_the_exception_tree(status: int, kind: type[ProviderError]) -> None:
    assert type(raised(status, "")) is kind
