"""``kind = "aws-imds"``: the spot interruption notice of the EC2 instance arbiter runs on.

For an arbiter that runs on the spot instance itself (the ``local`` executor on a GPU
box). Each poll, over IMDSv2:

1. ``PUT /latest/api/token`` (header ``X-aws-ec2-metadata-token-ttl-seconds``) — the
   session token, kept until shortly before its TTL runs out (by the ``now`` given to
   :meth:`AwsImdsSource.poll`) and fetched again after a 401;
2. on the first poll, the instance's identity: ``instance-id``, ``instance-type``,
   ``placement/region`` and ``placement/availability-zone-id`` (the zone *id*, as spot
   prices name zones, so the notice matches the offer);
3. ``GET /latest/meta-data/spot/instance-action`` — **404 means no notice**; a notice is
   ``{"action": "terminate"|"stop"|"hibernate", "time": "…Z"}`` where ``time`` is when
   the action happens (about two minutes after the notice): the notice's deadline.
4. With ``rebalance_recommendations = true``, also
   ``GET /latest/meta-data/events/recommendations/rebalance`` (404: none;
   ``{"noticeTime": "…Z"}``): a rebalance recommendation becomes a notice with deadline
   ``noticeTime`` + 2 minutes. The notice has no lower priority (the domain has none):
   it evacuates like an interruption, which is why it is off by default.

AWS recommends polling every 5 seconds (the default ``interval``). The endpoint is
configurable; tests point it at a fake on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import httpx
from pydantic import Field

from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import Market, Provider
from arbiter.errors import AuthFailed, BadPayload
from arbiter.interruptions import InterruptionOptions, iso_time, make_notice
from arbiter.interruptions.metadata import MetadataClient, MetadataUrl, PositiveSeconds
from arbiter.logs import get_logger

KIND = "aws-imds"
TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
IDENTITY_PATHS = {
    "instance_id": "/latest/meta-data/instance-id",
    "instance_type": "/latest/meta-data/instance-type",
    "region": "/latest/meta-data/placement/region",
    "zone_id": "/latest/meta-data/placement/availability-zone-id",
}
ACTIONS = frozenset({"terminate", "stop", "hibernate"})
REBALANCE_LEAD = timedelta(minutes=2)
TOKEN_MARGIN = timedelta(seconds=60)
"""A token is renewed this long before its TTL runs out."""


class AwsImdsOptions(InterruptionOptions):
    endpoint: MetadataUrl = "http://169.254.169.254"
    """The instance metadata service (IPv6: ``http://[fd00:ec2::254]``)."""
    timeout: PositiveSeconds = 2.0
    """Per request."""
    token_ttl_seconds: Annotated[int, Field(ge=60, le=21600)] = 21600
    rebalance_recommendations: bool = False
    """Also turn rebalance recommendations into notices (they evacuate like one)."""


def build(
    name: str, options: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None
) -> AwsImdsSource:
    return AwsImdsSource(name, AwsImdsOptions.parse(name, options), transport=transport)


class AwsImdsSource:
    """Notices of the instance arbiter runs on, from IMDSv2 (see the module docstring)."""

    def __init__(
        self,
        name: str,
        options: AwsImdsOptions,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self._client = MetadataClient(
            name, options.endpoint, timeout=options.timeout, headers={}, transport=transport
        )
        self._token: str | None = None
        self._token_until: datetime | None = None
        self._identity: dict[str, str] | None = None
        self._log = get_logger("interruptions", source=name, kind=KIND)

    def close(self) -> None:
        self._client.close()

    # -- IMDSv2 ---------------------------------------------------------------------

    def _session_token(self, now: datetime) -> str:
        if self._token and self._token_until and now < self._token_until:
            return self._token
        ttl = self.options.token_ttl_seconds
        response = self._client.request(
            "PUT", TOKEN_PATH, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)}
        )
        assert response is not None
        token = response.text.strip()
        if not token:
            raise BadPayload("empty session token", source=self.name, field=TOKEN_PATH)
        self._token = token
        self._token_until = now + timedelta(seconds=ttl) - TOKEN_MARGIN
        return token

    def _read(self, path: str, now: datetime, *, missing_ok: bool = False) -> httpx.Response | None:
        try:
            return self._client_get(path, now, missing_ok=missing_ok)
        except AuthFailed:
            # 401: the token expired early or IMDS restarted; one fresh token, one retry
            self._token = None
            return self._client_get(path, now, missing_ok=missing_ok)

    def _client_get(self, path: str, now: datetime, *, missing_ok: bool) -> httpx.Response | None:
        return self._client.request(
            "GET",
            path,
            missing_ok=missing_ok,
            headers={"X-aws-ec2-metadata-token": self._session_token(now)},
        )

    def identity(self, now: datetime) -> dict[str, str]:
        """Instance id, type, region and zone id (read once: they never change)."""
        if self._identity is None:
            found = {}
            for key, path in IDENTITY_PATHS.items():
                response = self._read(path, now)
                assert response is not None
                text = response.text.strip()
                if not text:
                    raise BadPayload("empty answer", source=self.name, field=path)
                found[key] = text
            self._identity = found
        return self._identity

    # -- InterruptionSource -----------------------------------------------------------

    def poll(self, now: datetime) -> Sequence[InterruptionNotice]:
        identity = self.identity(now)
        notices: list[InterruptionNotice] = []
        action = self._read(INSTANCE_ACTION_PATH, now, missing_ok=True)
        if action is not None:
            body = self._object(action, INSTANCE_ACTION_PATH)
            kind = body.get("action")
            if kind not in ACTIONS:
                raise BadPayload(
                    f"expected one of {', '.join(sorted(ACTIONS))}, got {kind!r}",
                    source=self.name,
                    field=f"{INSTANCE_ACTION_PATH}.action",
                )
            deadline = self._time(body, "time", INSTANCE_ACTION_PATH)
            notices.append(self._notice(identity, deadline, detail=identity["instance_id"]))
        if self.options.rebalance_recommendations:
            rebalance = self._read(REBALANCE_PATH, now, missing_ok=True)
            if rebalance is not None:
                body = self._object(rebalance, REBALANCE_PATH)
                noticed = self._time(body, "noticeTime", REBALANCE_PATH)
                notices.append(
                    self._notice(
                        identity,
                        noticed + REBALANCE_LEAD,
                        detail=f"{identity['instance_id']} (rebalance recommendation)",
                    )
                )
        return notices

    def _notice(
        self, identity: dict[str, str], deadline: datetime, detail: str
    ) -> InterruptionNotice:
        return make_notice(
            self.name,
            "instance identity",
            provider=Provider.AWS,
            region=identity["region"],
            zone=identity["zone_id"],
            instance_type=identity["instance_type"],
            market=Market.SPOT,
            deadline=deadline,
            detail=detail,
        )

    def _object(self, response: httpx.Response, path: str) -> dict[str, Any]:
        body = self._client.json(response, path)
        if not isinstance(body, dict):
            raise BadPayload(
                f"expected an object, got {type(body).__name__}", source=self.name, field=path
            )
        return body

    def _time(self, body: dict[str, Any], key: str, path: str) -> datetime:
        return iso_time(body.get(key), source=self.name, field=f"{path}.{key}")
