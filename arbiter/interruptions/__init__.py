"""Interruption notice sources: who tells arbiter that spot capacity is being reclaimed.

An explicit registry keyed by the ``kind`` used in the config
(``[interruptions.NAME] kind = "aws-sqs"``); each source lives in its own module and is
imported only when one of its kind is built, so the CLI never pays for boto3 or the
Kubernetes client::

    aws-sqs                 EventBridge "EC2 Spot Instance Interruption Warning" events
                            delivered to an SQS queue (the whole account, off-instance)
    aws-imds                the instance metadata spot/instance-action endpoint (IMDSv2)
    gcp-metadata            the GCE metadata server's instance/preempted
    azure-scheduled-events  the Azure IMDS Scheduled Events endpoint (Preempt events)
    kubernetes-nodes        nodes tainted or conditioned for termination

Every source implements :class:`arbiter.ports.InterruptionSource`: ``poll(now)`` returns
the notices seen since the last call and raises only
:class:`~arbiter.errors.ProviderError` subclasses (``Throttled``, ``Unavailable``,
``AuthFailed``, ``BadPayload``), translated at its boundary. Sources that read a
*state* (metadata endpoints, node taints) report the same notice on every poll while
the state lasts, with the deadline fixed when it was first seen (see
:class:`Sightings`), so the reconciler's de-duplication treats it as one notice.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from arbiter.domain.fleet import InterruptionNotice
from arbiter.errors import BadPayload, ConfigError, unknown_name_message
from providers.options import ClosedOptions, located

if TYPE_CHECKING:
    from arbiter.ports import InterruptionSource

INTERRUPTION_SOURCES: dict[str, str] = {
    "aws-imds": "arbiter.interruptions.aws_imds:build",
    "aws-sqs": "arbiter.interruptions.aws_sqs:build",
    "azure-scheduled-events": "arbiter.interruptions.azure_scheduled_events:build",
    "gcp-metadata": "arbiter.interruptions.gcp_metadata:build",
    "kubernetes-nodes": "arbiter.interruptions.kubernetes_nodes:build",
}
"""kind → ``module:factory``. A factory is called as ``factory(name, options)`` and
raises ConfigError naming ``interruptions.NAME.options.KEY`` for a bad option."""


def build_interruption_source(
    kind: str,
    name: str,
    options: Mapping[str, Any],
    *,
    origin: Callable[[str], str] | None = None,
) -> InterruptionSource:
    """The source of ``kind`` named ``name``; ConfigError for an unknown kind or bad
    options, naming the config file and line (or the variable) that set the option when
    ``origin`` (``Settings.origin_of``) is given, else ``interruptions.NAME.options`` and
    the key."""
    target = INTERRUPTION_SOURCES.get(kind)
    if target is None:
        raise ConfigError(
            unknown_name_message("interruption source kind", kind, INTERRUPTION_SOURCES),
            source=f"interruptions.{name}",
            key="kind",
        )
    module, _, factory = target.partition(":")
    with located(f"interruptions.{name}", origin):
        source: InterruptionSource = getattr(importlib.import_module(module), factory)(
            name, options
        )
    return source


class InterruptionOptions(ClosedOptions):
    """Base of every ``[interruptions.NAME.options]`` model: closed and immutable; errors
    name ``interruptions.NAME.options`` and the key."""

    section = "interruptions"


class Sightings:
    """When each signal still present was first seen.

    A state-based source (a metadata flag, a node taint) sees the same signal on every
    poll; fixing its deadline at the first sighting keeps the notice equal from poll to
    poll. Signals that are gone are forgotten by :meth:`keep_only`.
    """

    def __init__(self) -> None:
        self._first: dict[str, datetime] = {}

    def first_seen(self, key: str, now: datetime) -> datetime:
        return self._first.setdefault(key, now)

    def keep_only(self, keys: Iterable[str]) -> None:
        wanted = set(keys)
        self._first = {k: v for k, v in self._first.items() if k in wanted}

    def __contains__(self, key: object) -> bool:
        return key in self._first


def make_notice(source: str, where: str, **fields: Any) -> InterruptionNotice:
    """An :class:`InterruptionNotice` of ``source``; a value the domain refuses (an empty
    region, a naive deadline) is a BadPayload naming ``where`` and the field."""
    try:
        return InterruptionNotice(source=source, **fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(part) for part in error["loc"])
        raise BadPayload(str(error["msg"]), source=source, field=f"{where}: {loc}") from exc


def iso_time(text: Any, *, source: str, field: str) -> datetime:
    """A timezone-aware time from an ISO 8601 string (``2017-09-18T08:22:00Z``)."""
    if not isinstance(text, str):
        raise BadPayload(
            f"expected an ISO 8601 time, got {type(text).__name__}", source=source, field=field
        )
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadPayload(f"not an ISO 8601 time: {text!r}", source=source, field=field) from None
    if value.tzinfo is None:
        raise BadPayload(f"time without a timezone: {text!r}", source=source, field=field)
    return value
