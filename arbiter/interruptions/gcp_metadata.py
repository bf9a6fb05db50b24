"""``kind = "gcp-metadata"``: preemption of the Compute Engine VM arbiter runs on.

For an arbiter that runs on the Spot (or preemptible) VM itself. Every request carries
``Metadata-Flavor: Google``. Each poll:

1. on the first poll, the VM's identity from ``/computeMetadata/v1/instance/``:
   ``name``, ``zone`` (``projects/NUM/zones/us-central1-a``) and ``machine-type``
   (``projects/NUM/machineTypes/g2-standard-4``); the region is the zone without its
   last ``-x``;
2. ``GET /computeMetadata/v1/instance/preempted``: ``TRUE`` means Compute Engine has
   started to preempt the VM, ``FALSE`` that it has not; anything else is a
   BadPayload. With ``wait_seconds > 0`` the request waits for a change
   (``wait_for_change=true&timeout_sec=N&last_etag=…``, the ETag of the previous
   answer), so a preemption is seen the moment it starts instead of at the next poll.

GCE gives about 30 seconds between the preemption notice and the ACPI shutdown, so
the deadline is the moment ``TRUE`` was first seen plus ``notice_seconds`` (30); it
stays fixed while the flag stays ``TRUE``, so every poll reports the same notice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import httpx
from pydantic import Field

from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import Market, Provider
from arbiter.errors import BadPayload
from arbiter.interruptions import InterruptionOptions, Sightings, make_notice
from arbiter.interruptions.metadata import MetadataClient, MetadataUrl, PositiveSeconds
from arbiter.logs import get_logger

KIND = "gcp-metadata"
BASE = "/computeMetadata/v1/instance"
PREEMPTED_PATH = f"{BASE}/preempted"
IDENTITY_PATHS = {
    "name": f"{BASE}/name",
    "zone": f"{BASE}/zone",
    "machine_type": f"{BASE}/machine-type",
}


class GcpMetadataOptions(InterruptionOptions):
    endpoint: MetadataUrl = "http://metadata.google.internal"
    """The metadata server (also reachable as ``http://169.254.169.254``)."""
    timeout: PositiveSeconds = 2.0
    """Per request (a waiting request gets ``wait_seconds`` on top)."""
    wait_seconds: Annotated[int, Field(ge=0, le=300)] = 0
    """0: plain polling; more: each poll waits up to this long for the flag to change."""
    notice_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    """Time from the first ``TRUE`` to the shutdown: the notice's deadline."""


def build(
    name: str, options: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None
) -> GcpMetadataSource:
    return GcpMetadataSource(name, GcpMetadataOptions.parse(name, options), transport=transport)


class GcpMetadataSource:
    """Preemption of the VM arbiter runs on (see the module docstring)."""

    def __init__(
        self,
        name: str,
        options: GcpMetadataOptions,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self._client = MetadataClient(
            name,
            options.endpoint,
            timeout=options.timeout + options.wait_seconds,
            headers={"Metadata-Flavor": "Google"},
            transport=transport,
        )
        self._identity: dict[str, str] | None = None
        self._etag: str | None = None
        self._seen = Sightings()
        self._log = get_logger("interruptions", source=name, kind=KIND)

    def close(self) -> None:
        self._client.close()

    def identity(self) -> dict[str, str]:
        """Name, zone, region and machine type of the VM (read once)."""
        if self._identity is None:
            raw = {key: self._client.text(path) for key, path in IDENTITY_PATHS.items()}
            zone = raw["zone"].rsplit("/", 1)[-1]
            if zone.count("-") < 2:
                raise BadPayload(
                    f"not a zone like 'us-central1-a': {raw['zone']!r}",
                    source=self.name,
                    field=IDENTITY_PATHS["zone"],
                )
            self._identity = {
                "name": raw["name"],
                "zone": zone,
                "region": zone.rsplit("-", 1)[0],
                "machine_type": raw["machine_type"].rsplit("/", 1)[-1],
            }
        return self._identity

    def poll(self, now: datetime) -> Sequence[InterruptionNotice]:
        identity = self.identity()
        params: dict[str, str] = {}
        if self.options.wait_seconds and self._etag:
            params = {
                "wait_for_change": "true",
                "timeout_sec": str(self.options.wait_seconds),
                "last_etag": self._etag,
            }
        response = self._client.request("GET", PREEMPTED_PATH, params=params)
        assert response is not None
        self._etag = response.headers.get("ETag") or None
        flag = response.text.strip()
        if flag == "FALSE":
            self._seen.keep_only(())
            return []
        if flag != "TRUE":
            raise BadPayload(
                f"expected TRUE or FALSE, got {flag[:40]!r}", source=self.name, field=PREEMPTED_PATH
            )
        first = self._seen.first_seen("preempted", now)
        return [
            make_notice(
                self.name,
                PREEMPTED_PATH,
                provider=Provider.GCP,
                region=identity["region"],
                zone=identity["zone"],
                instance_type=identity["machine_type"],
                market=Market.SPOT,
                deadline=first + timedelta(seconds=self.options.notice_seconds),
                detail=identity["name"],
            )
        ]
