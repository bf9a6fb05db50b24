"""``kind = "aws-sqs"``: EC2 spot interruption warnings for a whole account, via SQS.

Set-up (see docs/interruptions.md): in every region that runs spot capacity, an
EventBridge rule matching ``{"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance
Interruption Warning"]}`` sends the events to an SQS queue used only by arbiter.

Each poll:

1. ``sqs:ReceiveMessage`` in batches of up to 10 — the first one long-polls for
   ``wait_seconds`` (default 1), the next ones do not wait and are asked for only while
   full batches come back, at most ``max_batches`` per poll;
2. each body is read as an EventBridge event (or an SNS notification wrapping one):
   ``detail-type``, ``region``, ``time``, ``detail.instance-id`` and
   ``detail.instance-action`` (``terminate``, ``stop`` or ``hibernate``);
3. ``ec2:DescribeInstances`` in the event's region, one request per region and batch
   (a filter on ``instance-id``, so an instance AWS no longer knows does not fail the
   others), gives each instance's type and zone. The zone is named by its *id*
   (``use1-az1``), as spot prices name zones: ``Placement.AvailabilityZoneId``, or the
   id of ``Placement.AvailabilityZone`` from ``ec2:DescribeAvailabilityZones`` (read
   once per region). Without that permission the notice has no zone, which makes it
   cover the instance type in every zone of the region;
4. each warning becomes ``InterruptionNotice(provider=aws, region, instance_type, zone,
   market=spot, deadline, source=NAME, detail=instance id)`` with deadline ``time`` + 2
   minutes (``hibernate``: ``time``, as hibernation starts at once);
5. ``sqs:DeleteMessageBatch`` deletes the messages once they are turned into notices.

What is deleted, and what is kept:

* a malformed message (not JSON, not an event, a missing or wrong field) is logged with
  the field and deleted — it would never get better;
* an event of another type is logged and deleted (the queue should be arbiter's own);
  ``EC2 Instance Rebalance Recommendation`` events are deleted without a notice unless
  ``rebalance_recommendations = true``, which turns them into notices with deadline
  ``time`` + 2 minutes. The domain has no lower-priority notice, so such a notice
  evacuates like an interruption: that is why it is off by default;
* a warning for an instance ``DescribeInstances`` does not return is logged and deleted;
* messages whose instance lookup *failed* (throttled, unavailable) are not deleted: SQS
  delivers them again after the queue's visibility timeout.

A poll never loses a good notice to a bad neighbour: when some messages were turned
into notices and a later call fails, the notices are returned and the failure logged;
the error is raised only when the poll has nothing to return.

Errors are translated at this boundary like the AWS market-data source does:
throttling codes → ``Throttled``; 5xx, connection failures and timeouts →
``Unavailable``; missing or refused credentials → ``AuthFailed``; anything else →
``BadPayload``. botocore's own retries are off: the next poll is the retry.

IAM: ``sqs:ReceiveMessage``, ``sqs:DeleteMessage`` on the queue,
``ec2:DescribeInstances`` and (optional) ``ec2:DescribeAvailabilityZones``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
from botocore.parsers import ResponseParserError
from pydantic import AfterValidator, Field, model_validator

from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import Market, Provider
from arbiter.errors import (
    AuthFailed,
    BadPayload,
    ProviderError,
    Throttled,
    Unavailable,
)
from arbiter.interruptions import InterruptionOptions, iso_time, make_notice
from arbiter.interruptions.metadata import PositiveSeconds
from arbiter.logs import get_logger
from providers import aws_clients
from providers.options import https_url

KIND = "aws-sqs"
SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
ACTIONS = frozenset({"terminate", "stop", "hibernate"})
NOTICE_LEAD = timedelta(minutes=2)
"""Time from the interruption warning to the interruption."""
BATCH = 10
"""The most messages one ReceiveMessage returns."""
_DESCRIBE_BATCH = 100

_REGION_ID = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
_THROTTLING = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "AWS.SimpleQueueService.RequestThrottled",
        "OverLimit",
    }
)
_AUTH = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "MissingAuthenticationToken",
        "InvalidSecurity",
        "AWS.SimpleQueueService.InvalidSecurity",
    }
)
_UNAVAILABLE = frozenset(
    {
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "AWS.SimpleQueueService.InternalError",
        "RequestTimeout",
    }
)


# -- options -------------------------------------------------------------------------


def _region_id(value: str) -> str:
    if not _REGION_ID.match(value):
        raise ValueError(f"not an AWS region id (like 'us-east-1'): {value!r}")
    return value


def queue_region(queue_url: str) -> str | None:
    """The region in an SQS queue URL (``https://sqs.us-east-1.amazonaws.com/…`` or the
    legacy ``https://us-east-1.queue.amazonaws.com/…``), or None."""
    host = urlsplit(queue_url).hostname or ""
    parts = host.split(".")
    if len(parts) >= 3 and parts[0] == "sqs" and _REGION_ID.match(parts[1]):
        return parts[1]
    if len(parts) >= 3 and parts[1] == "queue" and _REGION_ID.match(parts[0]):
        return parts[0]
    return None


RegionId = Annotated[str, AfterValidator(_region_id)]
Url = Annotated[str, AfterValidator(https_url)]


class AwsSqsOptions(InterruptionOptions):
    queue_url: Url
    """The queue the EventBridge rules deliver to."""
    region: RegionId | None = None
    """The queue's region; default: the one in ``queue_url``."""
    profile: Annotated[str, Field(min_length=1)] | None = None
    """A named profile of the shared AWS config; default: the standard credential chain."""
    sqs_endpoint_url: Url | None = None
    """SQS endpoint (a VPC endpoint, a proxy, a local fake); default: AWS's own."""
    ec2_endpoint_url: Url | None = None
    """EC2 endpoint for every region; default: AWS's own."""
    wait_seconds: Annotated[int, Field(ge=0, le=20)] = 1
    """Long-poll wait of the first ReceiveMessage of a poll."""
    max_batches: Annotated[int, Field(ge=1, le=100)] = 10
    """At most this many ReceiveMessage calls (of 10 messages) per poll."""
    timeout: PositiveSeconds = 10.0
    """Connect and read timeout of every call (the long-poll wait comes on top)."""
    rebalance_recommendations: bool = False
    """Turn rebalance recommendations into notices (they evacuate like one)."""

    @model_validator(mode="after")
    def _knows_its_region(self) -> AwsSqsOptions:
        if self.region is None and queue_region(self.queue_url) is None:
            raise ValueError(
                "give `region`: it cannot be read from the queue URL "
                "(expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
            )
        return self

    @property
    def queue_region(self) -> str:
        region = self.region or queue_region(self.queue_url)
        assert region is not None  # validated
        return region


def build(name: str, options: Mapping[str, Any]) -> AwsSqsSource:
    parsed = AwsSqsOptions.parse(name, options)
    session = aws_clients.session(
        parsed.profile, source=f"interruptions.{name}.options", key="profile"
    )
    return AwsSqsSource(name, parsed, session=session)


# -- messages --------------------------------------------------------------------------


class _Malformed(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class SpotWarning:
    """One interruption warning (or rebalance recommendation) read from a message."""

    receipt: str
    message_id: str
    instance_id: str
    region: str
    deadline: datetime
    kind: str


def _field(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _Malformed(where or "(body)", f"expected an object, got {type(obj).__name__}")
    value = obj.get(key)
    path = f"{where}.{key}" if where else key
    if value is None:
        raise _Malformed(path, "missing")
    return value


def _string(obj: Any, key: str, where: str = "") -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str) or not value.strip():
        raise _Malformed(f"{where}.{key}" if where else key, "expected a non-empty string")
    return value.strip()


def parse_event(body: str) -> dict[str, Any]:
    """The EventBridge event in a message body (unwrapping an SNS notification)."""
    try:
        event = json.loads(body)
    except ValueError:
        raise _Malformed("(body)", "not JSON") from None
    if isinstance(event, dict) and event.get("Type") == "Notification" and "Message" in event:
        try:
            event = json.loads(_string(event, "Message"))
        except ValueError:
            raise _Malformed("Message", "the SNS message is not JSON") from None
    if not isinstance(event, dict):
        raise _Malformed("(body)", f"expected an object, got {type(event).__name__}")
    return event


# -- the source --------------------------------------------------------------------------


class AwsSqsSource:
    """Spot interruption warnings from an SQS queue (see the module docstring)."""

    def __init__(self, name: str, options: AwsSqsOptions, *, session: boto3.session.Session):
        self.name = name
        self.options = options
        self._zone_ids: dict[str, dict[str, str]] = {}
        self._clients = aws_clients.Clients(
            session,
            aws_clients.client_config(
                connect_timeout=options.timeout,
                read_timeout=options.timeout + options.wait_seconds,
            ),
        )
        self._log = get_logger("interruptions", source=name, kind=KIND)

    # -- clients -------------------------------------------------------------------------

    def sqs_client(self) -> Any:
        return self._clients.get(
            "sqs", self.options.queue_region, endpoint_url=self.options.sqs_endpoint_url
        )

    def ec2_client(self, region: str) -> Any:
        return self._clients.get("ec2", region, endpoint_url=self.options.ec2_endpoint_url)

    def close(self) -> None:
        self._clients.close()

    # -- InterruptionSource -----------------------------------------------------------------

    def poll(self, now: datetime) -> Sequence[InterruptionNotice]:
        notices: list[InterruptionNotice] = []
        for batch in range(self.options.max_batches):
            try:
                messages = self._receive(wait=self.options.wait_seconds if batch == 0 else 0)
                if messages:
                    notices.extend(self._handle(messages))
            except ProviderError as exc:
                if not notices:
                    raise
                self._log.error(
                    "interruption poll cut short; notices so far are kept", error=str(exc)
                )
                break
            if len(messages) < BATCH:
                break
        return notices

    def _receive(self, *, wait: int) -> list[dict[str, Any]]:
        with self._calling("sqs:ReceiveMessage", self.options.queue_region):
            response = self.sqs_client().receive_message(
                QueueUrl=self.options.queue_url,
                MaxNumberOfMessages=BATCH,
                WaitTimeSeconds=wait,
            )
        messages = response.get("Messages") or []
        if not isinstance(messages, list):
            raise BadPayload("expected a list", source=self.name, field="Messages")
        return messages

    def _handle(self, messages: list[dict[str, Any]]) -> list[InterruptionNotice]:
        """Notices of one batch; deletes what is done with, keeps what must come back."""
        done: list[str] = []
        warnings: list[SpotWarning] = []
        for message in messages:
            receipt = message.get("ReceiptHandle")
            message_id = str(message.get("MessageId") or "?")
            if not isinstance(receipt, str):
                self._log.warning("message without a receipt handle", message_id=message_id)
                continue
            try:
                warning = self._read(message, receipt, message_id)
            except _Malformed as exc:
                self._log.warning(
                    "malformed interruption message deleted",
                    message_id=message_id,
                    field=exc.field,
                    error=exc.message,
                )
                done.append(receipt)
                continue
            if warning is None:
                done.append(receipt)
            else:
                warnings.append(warning)

        notices: list[InterruptionNotice] = []
        failure: ProviderError | None = None
        by_region: dict[str, list[SpotWarning]] = {}
        for warning in warnings:
            by_region.setdefault(warning.region, []).append(warning)
        for region, found in sorted(by_region.items()):
            try:
                instances = self._describe(region, sorted({w.instance_id for w in found}))
            except ProviderError as exc:
                failure = failure or exc
                self._log.warning(
                    "instance lookup failed; messages left in the queue",
                    region=region,
                    messages=len(found),
                    error=str(exc),
                )
                continue
            for warning in found:
                instance = instances.get(warning.instance_id)
                done.append(warning.receipt)
                if instance is None:
                    self._log.warning(
                        "interrupted instance not found; message deleted",
                        instance_id=warning.instance_id,
                        region=region,
                    )
                    continue
                instance_type, zone = instance
                try:
                    notice = make_notice(
                        self.name,
                        f"message {warning.message_id}",
                        provider=Provider.AWS,
                        region=region,
                        zone=zone,
                        instance_type=instance_type,
                        market=Market.SPOT,
                        deadline=warning.deadline,
                        detail=warning.instance_id,
                    )
                except BadPayload as exc:
                    self._log.warning(
                        "malformed interruption message deleted",
                        message_id=warning.message_id,
                        field=exc.field,
                        error=str(exc),
                    )
                    continue
                notices.append(notice)
        self._delete(done)
        if failure is not None and not notices:
            raise failure
        return notices

    def _read(self, message: dict[str, Any], receipt: str, message_id: str) -> SpotWarning | None:
        """The warning in one message; None for an event that gives no notice."""
        body = message.get("Body")
        if not isinstance(body, str):
            raise _Malformed("Body", "missing")
        event = parse_event(body)
        detail_type = _string(event, "detail-type")
        if detail_type not in (SPOT_WARNING, REBALANCE):
            self._log.warning(
                "not an interruption event; message deleted",
                message_id=message_id,
                detail_type=detail_type,
            )
            return None
        if detail_type == REBALANCE and not self.options.rebalance_recommendations:
            self._log.info(
                "rebalance recommendation ignored (rebalance_recommendations = false)",
                message_id=message_id,
            )
            return None
        region = _string(event, "region")
        if not _REGION_ID.match(region):
            raise _Malformed("region", f"not an AWS region id: {region!r}")
        detail = _field(event, "detail", "")
        instance_id = _string(detail, "instance-id", "detail")
        if not _INSTANCE_ID.match(instance_id):
            raise _Malformed("detail.instance-id", f"not an instance id: {instance_id!r}")
        try:
            time = iso_time(_field(event, "time", ""), source=self.name, field="time")
        except BadPayload as exc:
            raise _Malformed("time", str(exc).split(": ", 2)[-1]) from None
        deadline = time + NOTICE_LEAD
        if detail_type == SPOT_WARNING:
            action = _string(detail, "instance-action", "detail")
            if action not in ACTIONS:
                raise _Malformed(
                    "detail.instance-action",
                    f"expected one of {', '.join(sorted(ACTIONS))}, got {action!r}",
                )
            if action == "hibernate":
                deadline = time
        return SpotWarning(receipt, message_id, instance_id, region, deadline, detail_type)

    def _delete(self, receipts: list[str]) -> None:
        """Delete handled messages; a failure only means they come back (duplicates are
        harmless), so it is logged, not raised."""
        for start in range(0, len(receipts), BATCH):
            chunk = receipts[start : start + BATCH]
            try:
                with self._calling("sqs:DeleteMessageBatch", self.options.queue_region):
                    response = self.sqs_client().delete_message_batch(
                        QueueUrl=self.options.queue_url,
                        Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)],
                    )
            except ProviderError as exc:
                self._log.warning("deleting messages failed", messages=len(chunk), error=str(exc))
                continue
            failed = response.get("Failed") or []
            if failed:
                self._log.warning(
                    "some messages were not deleted",
                    failed=[f"{f.get('Code')}: {f.get('Message')}" for f in failed],
                )

    # -- EC2 --------------------------------------------------------------------------------

    def _describe(self, region: str, instance_ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """instance id → (instance type, zone id or None) of those EC2 knows."""
        found: dict[str, tuple[str, str | None]] = {}
        with self._calling("ec2:DescribeInstances", region):
            paginator = self.ec2_client(region).get_paginator("describe_instances")
            for start in range(0, len(instance_ids), _DESCRIBE_BATCH):
                ids = instance_ids[start : start + _DESCRIBE_BATCH]
                for page in paginator.paginate(Filters=[{"Name": "instance-id", "Values": ids}]):
                    for reservation in page.get("Reservations") or []:
                        for instance in reservation.get("Instances") or []:
                            instance_id = instance.get("InstanceId")
                            instance_type = instance.get("InstanceType")
                            if not isinstance(instance_id, str) or not isinstance(
                                instance_type, str
                            ):
                                raise BadPayload(
                                    "an instance without InstanceId or InstanceType",
                                    source=self.name,
                                    field="Reservations[].Instances[]",
                                )
                            placement = instance.get("Placement") or {}
                            found[instance_id] = (instance_type, self._zone_id(region, placement))
        return found

    def _zone_id(self, region: str, placement: dict[str, Any]) -> str | None:
        zone_id = placement.get("AvailabilityZoneId")
        if isinstance(zone_id, str) and zone_id:
            return zone_id
        name = placement.get("AvailabilityZone")
        if not isinstance(name, str) or not name:
            return None
        return self._zone_ids_of(region).get(name)

    def _zone_ids_of(self, region: str) -> dict[str, str]:
        """Zone name → zone id in ``region`` (read once; {} without the permission)."""
        if region not in self._zone_ids:
            try:
                with self._calling("ec2:DescribeAvailabilityZones", region):
                    zones = self.ec2_client(region).describe_availability_zones()
            except AuthFailed as exc:
                self._log.warning(
                    "cannot map zone names to zone ids; notices cover every zone of the region",
                    region=region,
                    error=str(exc),
                )
                self._zone_ids[region] = {}
            else:
                self._zone_ids[region] = {
                    z["ZoneName"]: z["ZoneId"]
                    for z in zones.get("AvailabilityZones") or []
                    if isinstance(z, dict) and z.get("ZoneName") and z.get("ZoneId")
                }
        return self._zone_ids[region]

    # -- the boundary ---------------------------------------------------------------------

    @contextmanager
    def _calling(self, action: str, region: str) -> Iterator[None]:
        """Translate botocore failures of ``action`` into arbiter's exception tree."""
        call = f"{action} ({region})"
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(exc, call, action) from exc
        except aws_clients.CREDENTIAL_ERRORS as exc:
            raise AuthFailed(
                f"{call}: no usable AWS credentials ({exc}); give them through the standard "
                "chain (variables, a profile, an IAM role)",
                source=self.name,
            ) from exc
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise Unavailable(f"{call}: {exc}", source=self.name) from exc
        except ResponseParserError as exc:
            raise Unavailable(f"{call}: unreadable response", source=self.name) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise BadPayload(f"{call}: {exc}", source=self.name) from exc

    def _client_error(
        self, exc: botocore.exceptions.ClientError, call: str, action: str
    ) -> ProviderError:
        response = aws_clients.ErrorResponse.of(exc)
        code, status = response.code, response.status
        text = f"{call}: {code or f'HTTP {status}'}: {response.message[:200]}"
        if code in _THROTTLING or status == 429:
            retry_after = response.headers.get("retry-after")
            return Throttled(
                text,
                source=self.name,
                retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        if code in _AUTH or "AccessDenied" in code or status in (401, 403):
            return AuthFailed(
                f"{text}; the credentials were refused or lack the IAM permission {action}",
                source=self.name,
            )
        if status >= 500 or code in _UNAVAILABLE:
            return Unavailable(text, source=self.name)
        return BadPayload(f"{text} (request rejected)", source=self.name)
