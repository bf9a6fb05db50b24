"""``kind = "kubernetes-nodes"``: spot nodes that a cluster marks for termination.

Node termination handlers and autoscalers put a taint (or a condition) on a node that
is about to go away. Each poll lists the cluster's nodes (``GET /api/v1/nodes``, paged,
optionally narrowed by ``label_selector``) and turns every node that

* carries a taint whose key is in ``taints`` — by default
  ``aws-node-termination-handler/spot-itn`` (AWS Node Termination Handler, on a spot
  interruption warning), ``karpenter.sh/disrupted`` and ``karpenter.sh/disruption``
  (Karpenter, v1 and earlier), ``cloud.google.com/impending-node-termination`` (GKE,
  on a Spot/preemptible node's termination) and ``ToBeDeletedByClusterAutoscaler``
  (the cluster autoscaler, also on AKS spot pools), or
* has a condition of a type in ``conditions`` with status ``True`` — by default
  ``TerminationImminent``,

into a notice, when the node runs on spot capacity. The notice names the capacity the
way the node's well-known labels do:

* provider — the prefix of ``spec.providerID`` (``aws://``, ``gce://``, ``azure://``;
  other nodes are skipped);
* region — ``topology.kubernetes.io/region``; instance type —
  ``node.kubernetes.io/instance-type`` (each with its deprecated ``beta`` / failure-domain
  fallback);
* zone — AWS: ``topology.k8s.aws/zone-id`` (a zone id, as spot prices name zones;
  without it the notice covers every zone of the region); GCP:
  ``topology.kubernetes.io/zone``; Azure: the zone number of
  ``topology.kubernetes.io/zone`` (``eastus-1`` → ``1``; ``0`` means no zone);
* market — ``karpenter.sh/capacity-type``, ``eks.amazonaws.com/capacityType``,
  ``cloud.google.com/gke-spot`` / ``gke-preemptible`` or
  ``kubernetes.azure.com/scalesetpriority``; when the labels do not say, a spot-only
  signal (the NTH ``spot-itn`` taint, the GKE taint, ``TerminationImminent``) means spot
  and any other signal leaves the node out. On-demand nodes are left out unless
  ``include_on_demand = true``: an on-demand node drained by an autoscaler is not
  capacity being reclaimed, and a notice would take the offer out of the market;
* deadline — when the taint was added (``timeAdded``) or the condition last changed,
  else when arbiter first saw it, plus the provider's notice time (AWS 2 min, GCP and
  Azure 30 s).

A node without the labels a notice needs is logged and skipped; the others still count.
API errors are translated at this boundary: 429 → ``Throttled``; 5xx, connection
errors and timeouts → ``Unavailable``; 401/403 → ``AuthFailed``; anything else →
``BadPayload``. The client's own retries are off.

RBAC: ``get``/``list`` on ``nodes`` (a ClusterRole).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as kubeconfig
from kubernetes.client.exceptions import ApiException
from pydantic import Field, model_validator

from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import Market, Provider
from arbiter.errors import (
    AuthFailed,
    BadPayload,
    ConfigError,
    ProviderError,
    Throttled,
    Unavailable,
)
from arbiter.interruptions import InterruptionOptions, Sightings, make_notice
from arbiter.interruptions.metadata import PositiveSeconds
from arbiter.logs import get_logger
from providers.http import retry_after_seconds

KIND = "kubernetes-nodes"
SPOT_ONLY_SIGNALS = frozenset(
    {
        "aws-node-termination-handler/spot-itn",
        "cloud.google.com/impending-node-termination",
        "TerminationImminent",
    }
)
DEFAULT_TAINTS = (
    "aws-node-termination-handler/spot-itn",
    "karpenter.sh/disrupted",
    "karpenter.sh/disruption",
    "cloud.google.com/impending-node-termination",
    "ToBeDeletedByClusterAutoscaler",
)
DEFAULT_CONDITIONS = ("TerminationImminent",)
NOTICE_LEAD: dict[Provider, timedelta] = {
    Provider.AWS: timedelta(minutes=2),
    Provider.GCP: timedelta(seconds=30),
    Provider.AZURE: timedelta(seconds=30),
}
PROVIDER_PREFIXES: dict[str, Provider] = {
    "aws": Provider.AWS,
    "gce": Provider.GCP,
    "azure": Provider.AZURE,
}
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
AWS_ZONE_ID_LABEL = "topology.k8s.aws/zone-id"
PAGE = 500


class KubernetesNodesOptions(InterruptionOptions):
    kubeconfig: Path | None = None
    """A kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``)."""
    context: Annotated[str, Field(min_length=1)] | None = None
    """A context of the kubeconfig (default: its current context)."""
    in_cluster: bool = False
    """Use the pod's service account (arbiter running in the cluster)."""
    label_selector: Annotated[str, Field(min_length=1)] | None = None
    """Only nodes matching this selector, e.g. ``nvidia.com/gpu.present=true``."""
    taints: tuple[Annotated[str, Field(min_length=1)], ...] = DEFAULT_TAINTS
    conditions: tuple[Annotated[str, Field(min_length=1)], ...] = DEFAULT_CONDITIONS
    include_on_demand: bool = False
    """Also report on-demand nodes marked for termination."""
    timeout: PositiveSeconds = 10.0
    """Per request."""

    @model_validator(mode="after")
    def _one_way_in(self) -> KubernetesNodesOptions:
        if self.in_cluster and (self.kubeconfig is not None or self.context is not None):
            raise ValueError("in_cluster = true takes no kubeconfig or context")
        if not self.taints and not self.conditions:
            raise ValueError("give at least one taint or condition to watch")
        return self


def build(name: str, options: Mapping[str, Any]) -> KubernetesNodesSource:
    parsed = KubernetesNodesOptions.parse(name, options)
    where = f"interruptions.{name}.options"
    configuration = k8s.Configuration()
    configuration.retries = False  # the next poll is the retry
    try:
        if parsed.in_cluster:
            kubeconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api = k8s.ApiClient(configuration)
        else:
            if parsed.kubeconfig is not None and not parsed.kubeconfig.is_file():
                raise ConfigError(
                    f"no kubeconfig file at {parsed.kubeconfig}", source=where, key="kubeconfig"
                )
            api = kubeconfig.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(parsed.kubeconfig) if parsed.kubeconfig else None,
                context=parsed.context,
                persist_config=False,
                client_configuration=configuration,
            )
    except (kubeconfig.ConfigException, OSError, ValueError) as exc:
        key = "in_cluster" if parsed.in_cluster else ("context" if parsed.context else "kubeconfig")
        raise ConfigError(f"cannot load the kube config: {exc}", source=where, key=key) from exc
    return KubernetesNodesSource(name, parsed, api)


class KubernetesNodesSource:
    """Spot nodes marked for termination (see the module docstring)."""

    def __init__(self, name: str, options: KubernetesNodesOptions, api: k8s.ApiClient) -> None:
        self.name = name
        self.options = options
        self._api = api
        self._core = k8s.CoreV1Api(api)
        self._seen = Sightings()
        self._taints = frozenset(options.taints)
        self._conditions = frozenset(options.conditions)
        self._log = get_logger("interruptions", source=name, kind=KIND)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def poll(self, now: datetime) -> Sequence[InterruptionNotice]:
        notices: list[InterruptionNotice] = []
        present: list[str] = []
        for node in self._nodes():
            signal = self._signal(node)
            if signal is None:
                continue
            name = (node.metadata.name if node.metadata else None) or "?"
            key = f"{name}/{node.metadata.uid if node.metadata else ''}"
            present.append(key)
            notice = self._notice(node, name, key, signal, now)
            if notice is not None:
                notices.append(notice)
        self._seen.keep_only(present)
        return notices

    # -- reading --------------------------------------------------------------------------

    def _nodes(self) -> Iterator[k8s.V1Node]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE, "_request_timeout": self.options.timeout}
            if self.options.label_selector:
                kwargs["label_selector"] = self.options.label_selector
            if token:
                kwargs["_continue"] = token
            page = self._list(kwargs)
            yield from page.items or []
            token = page.metadata._continue if page.metadata else None
            if not token:
                return

    def _list(self, kwargs: dict[str, Any]) -> k8s.V1NodeList:
        """One page of nodes; every client failure becomes a ProviderError."""
        try:
            result: k8s.V1NodeList = self._core.list_node(**kwargs)
        except ApiException as exc:
            raise self._api_error(exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(
                f"list nodes: cannot reach the API server at {self._api.configuration.host}: {exc}",
                source=self.name,
            ) from exc
        except ValueError as exc:
            raise BadPayload(f"list nodes: unreadable response: {exc}", source=self.name) from exc
        return result

    def _api_error(self, exc: ApiException) -> ProviderError:
        status = int(exc.status or 0)
        text = f"list nodes: HTTP {status} {exc.reason or ''}".strip()
        if status == 429:
            headers = exc.headers or {}
            return Throttled(
                text, source=self.name, retry_after=retry_after_seconds(headers.get("Retry-After"))
            )
        if status in (401, 403):
            return AuthFailed(
                f"{text}: the credentials were refused or may not list nodes "
                "(needs get/list on nodes)",
                source=self.name,
            )
        if status >= 500 or status == 0:
            return Unavailable(text, source=self.name)
        return BadPayload(text, source=self.name)

    # -- interpreting ----------------------------------------------------------------------

    def _signal(self, node: k8s.V1Node) -> tuple[str, datetime | None] | None:
        """The first termination signal on the node (name, when it appeared), if any."""
        for taint in (node.spec.taints if node.spec else None) or []:
            if taint.key in self._taints:
                return taint.key, _aware(taint.time_added)
        for condition in (node.status.conditions if node.status else None) or []:
            if condition.type in self._conditions and condition.status == "True":
                return condition.type, _aware(condition.last_transition_time)
        return None

    def _notice(
        self,
        node: k8s.V1Node,
        name: str,
        key: str,
        signal: tuple[str, datetime | None],
        now: datetime,
    ) -> InterruptionNotice | None:
        reason, since = signal
        labels: dict[str, str] = (node.metadata.labels if node.metadata else None) or {}
        provider_id = (node.spec.provider_id if node.spec else None) or ""
        provider = PROVIDER_PREFIXES.get(provider_id.partition(":")[0])
        if provider is None:
            self._log.warning(
                "node marked for termination on an unknown provider; skipped",
                node=name,
                signal=reason,
                provider_id=provider_id,
            )
            return None
        market = _market(labels, reason)
        if market is None:
            self._log.info(
                "node marked for termination, capacity type unknown; skipped",
                node=name,
                signal=reason,
            )
            return None
        if market is Market.ON_DEMAND and not self.options.include_on_demand:
            self._log.debug("on-demand node marked for termination; skipped", node=name)
            return None
        region = _label(labels, REGION_LABELS)
        instance_type = _label(labels, TYPE_LABELS)
        if region is None or instance_type is None:
            self._log.warning(
                "node marked for termination lacks region or instance-type labels; skipped",
                node=name,
                signal=reason,
            )
            return None
        first = since or self._seen.first_seen(key, now)
        try:
            return make_notice(
                self.name,
                f"node {name}",
                provider=provider,
                region=region,
                zone=_zone(provider, region, labels),
                instance_type=instance_type,
                market=market,
                deadline=first + NOTICE_LEAD[provider],
                detail=f"{name} ({reason})",
            )
        except BadPayload as exc:
            self._log.warning("node skipped", node=name, field=exc.field, error=str(exc))
            return None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _label(labels: Mapping[str, str], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


def _market(labels: Mapping[str, str], signal: str) -> Market | None:
    karpenter = labels.get("karpenter.sh/capacity-type")
    if karpenter:
        return Market.SPOT if karpenter == "spot" else Market.ON_DEMAND
    eks = labels.get("eks.amazonaws.com/capacityType")
    if eks:
        return Market.SPOT if eks == "SPOT" else Market.ON_DEMAND
    if "true" in (
        labels.get("cloud.google.com/gke-spot"),
        labels.get("cloud.google.com/gke-preemptible"),
    ):
        return Market.SPOT
    aks = labels.get("kubernetes.azure.com/scalesetpriority")
    if aks:
        return Market.SPOT if aks == "spot" else Market.ON_DEMAND
    return Market.SPOT if signal in SPOT_ONLY_SIGNALS else None


def _zone(provider: Provider, region: str, labels: Mapping[str, str]) -> str | None:
    if provider is Provider.AWS:
        return labels.get(AWS_ZONE_ID_LABEL) or None
    zone = _label(labels, ZONE_LABELS)
    if zone is None:
        return None
    if provider is Provider.AZURE:
        number = zone.removeprefix(f"{region}-")
        return None if number in ("", "0") or not number.isdigit() else number
    return zone
