"""``kind = "azure-scheduled-events"``: Spot evictions from Azure Scheduled Events.

For an arbiter that runs on an Azure Spot VM (or next to Spot VMs of the same uniform
scale set). Every request carries ``Metadata: true``. Each poll:

1. on the first poll, the VM's identity from
   ``GET /metadata/instance?api-version=2021-02-01``: ``compute.name``,
   ``compute.location`` (the region), ``compute.vmSize`` (the instance type) and
   ``compute.zone`` (``""`` when the VM has no zone);
2. ``GET /metadata/scheduledevents?api-version=2020-07-01`` →
   ``{DocumentIncarnation, Events[{EventId, EventType, ResourceType, Resources[],
   EventStatus, NotBefore, …}]}``. Each event with ``EventType: "Preempt"`` naming this
   VM in ``Resources`` becomes a notice whose deadline is ``NotBefore`` (RFC 1123,
   ``Tue, 09 Aug 2022 17:07:32 GMT``; at least 30 s after the event appears). An empty
   ``NotBefore`` (an event already ``Started``) counts from when it was first seen.
   Other event types (Reboot, Redeploy, Freeze, Terminate) are not capacity being
   reclaimed and are ignored. Events naming *other* VMs become notices only with
   ``other_vms = true``, which assumes they have this VM's size and region (true in a
   uniform scale set); otherwise they are left to the arbiter on those VMs.

A malformed event is logged with its field and skipped (the other events still count);
a body that is not a Scheduled Events document is a BadPayload.

When to acknowledge
-------------------

Acknowledging an event (``POST /metadata/scheduledevents`` with
``{"StartRequests": [{"EventId": …}]}``) lets Azure evict the VM *before*
``NotBefore``. Make-before-break wants the old replica to serve until the replacement is
ready, so by default arbiter never acknowledges: the eviction happens at ``NotBefore``
anyway. With ``acknowledge = true`` an event is acknowledged on the poll *after* the one
that reported it — the daemon has recorded the notice by then — for operators who want
the VM gone as early as possible (e.g. a VM that only runs arbiter).

The first request to Scheduled Events after a VM starts turns the service on and can
take a while; a timeout then is an ``Unavailable`` and the next poll tries again.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import Market, Provider
from arbiter.errors import BadPayload, ProviderError
from arbiter.interruptions import InterruptionOptions, Sightings, make_notice
from arbiter.interruptions.metadata import MetadataClient, MetadataUrl, PositiveSeconds
from arbiter.logs import get_logger

KIND = "azure-scheduled-events"
EVENTS_PATH = "/metadata/scheduledevents"
EVENTS_API_VERSION = "2020-07-01"
INSTANCE_PATH = "/metadata/instance"
INSTANCE_API_VERSION = "2021-02-01"
PREEMPT = "Preempt"


class AzureScheduledEventsOptions(InterruptionOptions):
    endpoint: MetadataUrl = "http://169.254.169.254"
    """The Azure Instance Metadata Service."""
    timeout: PositiveSeconds = 5.0
    """Per request."""
    acknowledge: bool = False
    """Acknowledge reported Preempt events (lets Azure evict before NotBefore)."""
    other_vms: bool = False
    """Also report events naming other VMs, as if they had this VM's size and region."""


def build(
    name: str, options: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None
) -> AzureScheduledEventsSource:
    parsed = AzureScheduledEventsOptions.parse(name, options)
    return AzureScheduledEventsSource(name, parsed, transport=transport)


class AzureScheduledEventsSource:
    """Preempt events of Azure Scheduled Events (see the module docstring)."""

    def __init__(
        self,
        name: str,
        options: AzureScheduledEventsOptions,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self._client = MetadataClient(
            name,
            options.endpoint,
            timeout=options.timeout,
            headers={"Metadata": "true"},
            transport=transport,
        )
        self._identity: dict[str, str] | None = None
        self._seen = Sightings()
        self._reported: set[str] = set()
        """Events the previous poll reported (acknowledged on the next one)."""
        self._acknowledged: set[str] = set()
        self.incarnation: int | None = None
        """The DocumentIncarnation of the last document read."""
        self._log = get_logger("interruptions", source=name, kind=KIND)

    def close(self) -> None:
        self._client.close()

    # -- reading ----------------------------------------------------------------------

    def identity(self) -> dict[str, str]:
        """Name, region, size and zone of this VM (read once)."""
        if self._identity is None:
            path = INSTANCE_PATH
            response = self._client.request(
                "GET", path, params={"api-version": INSTANCE_API_VERSION}
            )
            assert response is not None
            body = self._client.json(response, path)
            compute = body.get("compute") if isinstance(body, dict) else None
            if not isinstance(compute, dict):
                raise BadPayload("missing or not an object", source=self.name, field="compute")
            found = {}
            for key, field in (("name", "name"), ("region", "location"), ("size", "vmSize")):
                value = compute.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise BadPayload(
                        "missing or not a string", source=self.name, field=f"compute.{field}"
                    )
                found[key] = value.strip()
            zone = compute.get("zone")
            found["zone"] = zone.strip() if isinstance(zone, str) else ""
            self._identity = found
        return self._identity

    def _document(self) -> list[Any]:
        response = self._client.request(
            "GET", EVENTS_PATH, params={"api-version": EVENTS_API_VERSION}
        )
        assert response is not None
        body = self._client.json(response, EVENTS_PATH)
        if not isinstance(body, dict):
            raise BadPayload(
                f"expected an object, got {type(body).__name__}", source=self.name, field="(body)"
            )
        events = body.get("Events")
        if not isinstance(events, list):
            raise BadPayload("missing or not a list", source=self.name, field="Events")
        incarnation = body.get("DocumentIncarnation")
        self.incarnation = incarnation if isinstance(incarnation, int) else None
        return events

    # -- InterruptionSource -------------------------------------------------------------

    def poll(self, now: datetime) -> Sequence[InterruptionNotice]:
        identity = self.identity()
        events = self._document()
        notices: list[InterruptionNotice] = []
        present: set[str] = set()
        reported: set[str] = set()
        for index, event in enumerate(events):
            where = f"Events[{index}]"
            try:
                parsed = self._event(event, where)
            except BadPayload as exc:
                self._log.warning(
                    "malformed scheduled event skipped", field=exc.field, error=str(exc)
                )
                continue
            event_id, event_type, resources, not_before = parsed
            if event_type != PREEMPT:
                continue
            present.add(event_id)
            deadline = not_before or self._seen.first_seen(event_id, now)
            for resource in resources:
                if resource != identity["name"] and not self.options.other_vms:
                    self._log.debug("preempt event for another VM", vm=resource, event_id=event_id)
                    continue
                notices.append(
                    make_notice(
                        self.name,
                        where,
                        provider=Provider.AZURE,
                        region=identity["region"],
                        zone=identity["zone"] or None,
                        instance_type=identity["size"],
                        market=Market.SPOT,
                        deadline=deadline,
                        detail=f"{resource} (event {event_id})",
                    )
                )
                reported.add(event_id)
        self._seen.keep_only(present)
        if self.options.acknowledge:
            self._acknowledge(reported)
        return notices

    def _event(self, event: Any, where: str) -> tuple[str, str, list[str], datetime | None]:
        if not isinstance(event, dict):
            raise BadPayload("expected an object", source=self.name, field=where)
        event_id = event.get("EventId")
        event_type = event.get("EventType")
        resources = event.get("Resources")
        for key, value in (("EventId", event_id), ("EventType", event_type)):
            if not isinstance(value, str) or not value:
                raise BadPayload(
                    "missing or not a string", source=self.name, field=f"{where}.{key}"
                )
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise BadPayload(
                "missing or not a list of VM names", source=self.name, field=f"{where}.Resources"
            )
        assert isinstance(event_id, str) and isinstance(event_type, str)
        return event_id, event_type, resources, self._not_before(event, where)

    def _not_before(self, event: dict[str, Any], where: str) -> datetime | None:
        text = event.get("NotBefore")
        field = f"{where}.NotBefore"
        if text in (None, ""):
            return None
        if not isinstance(text, str):
            raise BadPayload("expected an RFC 1123 time", source=self.name, field=field)
        try:
            value = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            raise BadPayload(
                f"not an RFC 1123 time: {text!r}", source=self.name, field=field
            ) from None
        # RFC 1123 dates are GMT; parsedate gives a naive datetime for "-0000"
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    # -- acknowledging ------------------------------------------------------------------

    def _acknowledge(self, reported: set[str]) -> None:
        """Acknowledge the events an *earlier* poll reported that are still reported now.

        A failure is logged and tried again on the next poll: it never hides a notice."""
        due = sorted((self._reported & reported) - self._acknowledged)
        self._acknowledged &= reported
        self._reported = reported
        if not due:
            return
        try:
            self._client.request(
                "POST",
                EVENTS_PATH,
                params={"api-version": EVENTS_API_VERSION},
                json={"StartRequests": [{"EventId": event_id} for event_id in due]},
            )
        except ProviderError as exc:
            self._log.warning("acknowledging scheduled events failed", events=due, error=str(exc))
            return
        self._acknowledged.update(due)
        self._log.info("scheduled events acknowledged", events=due)
