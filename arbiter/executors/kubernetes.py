"""The Kubernetes executor: one cluster per region, one Deployment per replica group,
one Gateway API HTTPRoute per workload.

Where things live (see docs/executors/kubernetes.md for the whole picture):

* **Clusters.** ``clusters`` maps a region (``provider:region``, as
  :attr:`Offer.region_key`) to a kube context or kubeconfig file and a namespace. A
  replica group on an offer runs in the cluster of the offer's region; an offer in a
  region with no cluster is an :class:`ExecutorError`.
* **A replica group** is a Deployment named ``<workload>-<10 hex of sha256(offer key)>``
  (see :func:`group_name`), labelled ``arbiter.dev/workload``, ``arbiter.dev/offer``
  (the hash) and ``app.kubernetes.io/managed-by=arbiter``, with the full offer key in
  the ``arbiter.dev/offer-key`` annotation (``groups`` reads offers back from it). Its
  pods ask for ``nvidia.com/gpu = gpus_per_replica`` and are pinned to the offer's
  instance type, zone and capacity type (:func:`node_placement`). Next to it: a
  Service of the same name and a ServiceExport (Multi-Cluster Services API), so the
  group is reachable from the routing cluster as a ServiceImport of that name.
* **Traffic.** The routing cluster holds one HTTPRoute per workload (named like the
  workload, attached to the configured Gateway). Each rule's ``backendRefs`` are the
  groups' ServiceImports with their weights; :meth:`KubernetesExecutor.set_weights`
  replaces them in one merge patch guarded by ``resourceVersion``, leaving the rules'
  matches and filters as an operator wrote them. The route's ``arbiter.dev/backends``
  annotation maps backend names back to group ids.

Behaviour:

* ``ensure(..., 0)`` deletes the Deployment, its Service and ServiceExport (the pods
  get their termination grace period); a missing group is not an error.
* Ready replicas are the Deployment's ``status.readyReplicas`` (capped at desired).
* ``ensure`` raises :class:`CapacityUnavailable` when fewer pods are placed on nodes
  than asked for and the cluster says why: a pod ``PodScheduled=False`` /
  ``Unschedulable`` for at least ``unschedulable_grace`` (a node autoscaler needs time
  to add a GPU node, and the scheduler marks pods unschedulable before it does), the
  Deployment's ``ReplicaFailure`` (e.g. a GPU ResourceQuota), or
  ``ProgressDeadlineExceeded``. Before raising it cuts the group back to the pods that
  were placed (the ReplicaSet controller removes unplaced pods first), and deletes it
  when none were, so an offer without capacity leaves nothing pending behind.
* ``in_flight`` is None: a Gateway does not tell; the caller waits out its drain timeout.
* Every Kubernetes API error (``ApiException``) and transport error (urllib3) becomes
  an :class:`ExecutorError` naming the cluster and the action; the client's own
  retries are off (``retries=False``) so nothing retries twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import structlog
import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as kubeconfig
from kubernetes.client.exceptions import ApiException
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from arbiter.domain.fleet import ReplicaGroup, group_id
from arbiter.domain.market import Market, Offer, Provider
from arbiter.domain.values import parse_duration
from arbiter.domain.workloads import Workload
from arbiter.errors import CapacityUnavailable, ConfigError, ExecutorError
from arbiter.ports import Clock

T = TypeVar("T")
C = TypeVar("C", k8s.V1DeploymentCondition, k8s.V1PodCondition)

LABEL_WORKLOAD = "arbiter.dev/workload"
LABEL_OFFER = "arbiter.dev/offer"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "arbiter"
ANNOTATION_OFFER_KEY = "arbiter.dev/offer-key"
ANNOTATION_BACKENDS = "arbiter.dev/backends"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "server"
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
MAX_WEIGHT = 1_000_000
"""The largest backendRef weight Gateway API accepts."""

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
_AWS_ZONE_ID = re.compile(r"^[a-z]{2,5}\d+-az\d+$")

Seconds = Annotated[float, BeforeValidator(parse_duration)]
CapacityLabels = Literal["karpenter", "eks", "gke", "aks"]

DEFAULT_CAPACITY_LABELS: dict[Provider, CapacityLabels] = {
    Provider.AWS: "karpenter",
    Provider.GCP: "gke",
    Provider.AZURE: "aks",
}


# -- options ------------------------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ClusterOptions(_Closed):
    """How to reach the cluster serving one region, and where groups go in it."""

    context: Annotated[str, Field(min_length=1)] | None = None
    """A context of the kubeconfig (default: its current context)."""
    kubeconfig: Path | None = None
    """A kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``)."""
    namespace: Annotated[str, Field(pattern=_DNS_LABEL)] = "default"
    capacity_labels: CapacityLabels | None = None
    """Which node labels tell spot from on-demand (default by provider: aws
    ``karpenter``, gcp ``gke``, azure ``aks``)."""

    @model_validator(mode="after")
    def _names_a_connection(self) -> ClusterOptions:
        if self.context is None and self.kubeconfig is None:
            raise ValueError("give a context, a kubeconfig file, or both")
        return self


class TemplateOptions(_Closed):
    """What every replica runs. The GPU request is not here: it is the workload's
    ``gpus_per_replica``."""

    image: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    requests: dict[str, str] = Field(default_factory=dict)
    """Resource requests besides the GPU, e.g. ``{cpu = "8", memory = "64Gi"}``."""
    limits: dict[str, str] = Field(default_factory=dict)
    readiness_path: str | None = None
    """HTTP path of the server's readiness check (e.g. ``/health`` for vLLM). Without
    one a replica counts as ready once its container runs, not once it serves."""

    @field_validator("requests", "limits")
    @classmethod
    def _no_gpu(cls, value: dict[str, str]) -> dict[str, str]:
        if GPU_RESOURCE in value:
            raise ValueError(f"{GPU_RESOURCE} is set from the workload's gpus_per_replica")
        return value

    @field_validator("readiness_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


class KubernetesOptions(_Closed):
    """``[executor.options]`` of ``kind = "kubernetes"``."""

    clusters: Annotated[dict[str, ClusterOptions], Field(min_length=1)]
    """``provider:region`` → the cluster serving that region."""
    routing_cluster: str
    """The region key (one of ``clusters``) whose cluster holds the HTTPRoutes."""
    gateway: Annotated[str, Field(pattern=_DNS_SUBDOMAIN)]
    """Name of the Gateway the HTTPRoutes attach to."""
    gateway_namespace: Annotated[str, Field(pattern=_DNS_LABEL)] | None = None
    """Namespace of the Gateway (default: the routing cluster's namespace)."""
    hostnames: tuple[str, ...] = ()
    template: TemplateOptions
    """What replicas run, unless ``templates`` has an entry for the workload."""
    templates: dict[Annotated[str, Field(pattern=_DNS_LABEL)], TemplateOptions] = Field(
        default_factory=dict
    )
    """Workload name → its own template (image, model arguments, resources)."""
    mcs_api_version: str = "multicluster.x-k8s.io/v1alpha1"
    """API of ServiceExport/ServiceImport (GKE: ``net.gke.io/v1``)."""
    unschedulable_grace: Seconds = 600.0
    """How long a pod may stay unschedulable before the offer counts as out of capacity."""
    progress_deadline: Seconds = 1200.0
    """The Deployments' ``progressDeadlineSeconds`` (GPU node + model load can be slow)."""
    timeout: Seconds = 30.0
    """Per API request."""

    @field_validator("clusters")
    @classmethod
    def _region_keys(cls, value: dict[str, ClusterOptions]) -> dict[str, ClusterOptions]:
        providers = ", ".join(p.value for p in Provider)
        for key in value:
            provider, _, region = key.partition(":")
            if provider not in {p.value for p in Provider} or not region or ":" in region:
                raise ValueError(
                    f"{key!r}: keys are provider:region, e.g. 'gcp:us-east4' "
                    f"(providers: {providers})"
                )
        return value

    @field_validator("mcs_api_version")
    @classmethod
    def _group_version(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9.-]+/v[0-9a-z]+", value):
            raise ValueError(
                f"expected GROUP/VERSION, e.g. multicluster.x-k8s.io/v1alpha1, got {value!r}"
            )
        return value

    @field_validator("timeout", "progress_deadline")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than zero")
        return value

    @field_validator("routing_cluster")
    @classmethod
    def _routing_cluster_is_configured(cls, value: str, info: ValidationInfo) -> str:
        clusters = info.data.get("clusters")
        if clusters is not None and value not in clusters:
            raise ValueError(f"{value!r} is not one of the clusters: {', '.join(sorted(clusters))}")
        return value

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> KubernetesOptions:
        """Validate ``options``; a ConfigError names ``executor.options`` and the key."""
        where = "executor.options"
        if not isinstance(options, Mapping):
            raise ConfigError("expected a table of options", source="config", key=where)
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = [str(part) for part in error["loc"]]
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                model = _model_at(cls, loc[:-1])
                message = f"unknown option; known: {', '.join(model.model_fields)}"
            raise ConfigError(message, source="config", key=".".join([where, *loc])) from None


def _model_at(model: type[BaseModel], loc: Sequence[str]) -> type[BaseModel]:
    """The options model at ``loc`` (for naming the known keys of a nested table)."""
    if not loc:
        return model
    if loc[0] == "template" or (loc[0] == "templates" and len(loc) > 1):
        return TemplateOptions
    if loc[0] == "clusters":
        return ClusterOptions
    return model


# -- manifests (pure) ---------------------------------------------------------------


def _digest(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def offer_hash(offer: Offer) -> str:
    """The ``arbiter.dev/offer`` label value: 10 hex digits of sha256(offer key)."""
    return _digest(offer.key)


def group_name(workload: str, offer: Offer) -> str:
    """The name of a group's Deployment, Service and ServiceExport.

    ``<workload>-<offer hash>``; a valid Service name (63 characters, starting with a
    letter): a workload name starting with a digit gets a ``w`` prefix, and one longer
    than 52 characters is shortened to 41 plus a hash of the whole name.
    """
    stem = workload if workload[0].isalpha() else f"w{workload}"
    if len(stem) > 52:
        stem = f"{stem[:41].rstrip('-')}-{_digest(workload)}"
    return f"{stem}-{offer_hash(offer)}"


def parse_offer_key(key: str) -> Offer:
    """The offer a key names (the inverse of :attr:`Offer.key`)."""
    parts = key.split(":")
    if len(parts) < 5:
        raise ValueError(f"not an offer key: {key!r}")
    provider, region, zone, market = parts[0], parts[1], parts[2], parts[-1]
    return Offer(
        provider=Provider(provider),
        region=region,
        zone=None if zone == "-" else zone,
        instance_type=":".join(parts[3:-1]),
        market=Market(market),
    )


def parse_group_id(gid: str) -> tuple[str, Offer]:
    """(workload, offer) of a group id ``workload@offer-key``."""
    workload, at, key = gid.partition("@")
    if not at or not workload:
        raise ValueError(f"not a group id (workload@offer-key): {gid!r}")
    return workload, parse_offer_key(key)


def node_placement(offer: Offer, capacity_labels: CapacityLabels) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity pinning pods to the offer's capacity.

    * instance type: ``node.kubernetes.io/instance-type``;
    * zone: ``topology.kubernetes.io/zone`` (an AWS zone id such as ``use1-az4``:
      ``topology.k8s.aws/zone-id``; an Azure zone number ``1``: ``<region>-1``);
    * capacity type, by ``capacity_labels`` (spot / on-demand):

      - ``karpenter``: ``karpenter.sh/capacity-type`` = ``spot`` / ``on-demand``;
      - ``eks`` (managed node groups): ``eks.amazonaws.com/capacityType`` = ``SPOT`` /
        ``ON_DEMAND``;
      - ``gke``: ``cloud.google.com/gke-spot=true`` and a toleration of that taint /
        node affinity ``cloud.google.com/gke-spot NotIn [true]``;
      - ``aks``: ``kubernetes.azure.com/scalesetpriority=spot`` and a toleration of the
        taint AKS puts on spot pools / node affinity ``... NotIn [spot]``;

    * every pod tolerates the ``nvidia.com/gpu`` taint GKE and AKS put on GPU nodes.
    """
    selector: dict[str, str] = {"node.kubernetes.io/instance-type": offer.instance_type}
    if offer.zone:
        if offer.provider is Provider.AWS and _AWS_ZONE_ID.match(offer.zone):
            selector["topology.k8s.aws/zone-id"] = offer.zone
        elif offer.provider is Provider.AZURE and offer.zone.isdigit():
            selector["topology.kubernetes.io/zone"] = f"{offer.region}-{offer.zone}"
        else:
            selector["topology.kubernetes.io/zone"] = offer.zone
    tolerations: list[dict[str, str]] = [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    ]
    spot = offer.market is Market.SPOT
    not_in: tuple[str, str] | None = None
    if capacity_labels == "karpenter":
        selector["karpenter.sh/capacity-type"] = "spot" if spot else "on-demand"
    elif capacity_labels == "eks":
        selector["eks.amazonaws.com/capacityType"] = "SPOT" if spot else "ON_DEMAND"
    elif capacity_labels == "gke":
        if spot:
            selector["cloud.google.com/gke-spot"] = "true"
            tolerations.append(
                {
                    "key": "cloud.google.com/gke-spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoSchedule",
                }
            )
        else:
            not_in = ("cloud.google.com/gke-spot", "true")
    else:
        if spot:
            selector["kubernetes.azure.com/scalesetpriority"] = "spot"
            tolerations.append(
                {
                    "key": "kubernetes.azure.com/scalesetpriority",
                    "operator": "Equal",
                    "value": "spot",
                    "effect": "NoSchedule",
                }
            )
        else:
            not_in = ("kubernetes.azure.com/scalesetpriority", "spot")
    placement: dict[str, Any] = {"nodeSelector": selector, "tolerations": tolerations}
    if not_in is not None:
        key, value = not_in
        placement["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": key, "operator": "NotIn", "values": [value]}]}
                    ]
                }
            }
        }
    return placement


def group_labels(workload: str, offer: Offer) -> dict[str, str]:
    return {
        LABEL_WORKLOAD: workload,
        LABEL_OFFER: offer_hash(offer),
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def _metadata(name: str, namespace: str, workload: str, offer: Offer) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": group_labels(workload, offer),
        "annotations": {ANNOTATION_OFFER_KEY: offer.key},
    }


def deployment_manifest(
    workload: Workload,
    offer: Offer,
    replicas: int,
    *,
    namespace: str,
    template: TemplateOptions,
    capacity_labels: CapacityLabels,
    progress_deadline_seconds: int,
) -> dict[str, Any]:
    """The Deployment of a replica group."""
    name = group_name(workload.name, offer)
    labels = group_labels(workload.name, offer)
    gpus = str(workload.gpus_per_replica)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": template.image,
        "ports": [{"name": "http", "containerPort": template.port, "protocol": "TCP"}],
        "resources": {
            "requests": {**template.requests, GPU_RESOURCE: gpus},
            "limits": {**template.limits, GPU_RESOURCE: gpus},
        },
    }
    if template.args:
        container["args"] = list(template.args)
    if template.env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(template.env.items())]
    if template.readiness_path:
        container["readinessProbe"] = {
            "httpGet": {"path": template.readiness_path, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        }
    pod_spec: dict[str, Any] = {
        **node_placement(offer, capacity_labels),
        "containers": [container],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace, workload.name, offer),
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": progress_deadline_seconds,
            "selector": {
                "matchLabels": {LABEL_WORKLOAD: workload.name, LABEL_OFFER: offer_hash(offer)}
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def service_manifest(workload: str, offer: Offer, *, namespace: str, port: int) -> dict[str, Any]:
    """The Service in front of a group's pods (exported under the same name)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(group_name(workload, offer), namespace, workload, offer),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_WORKLOAD: workload, LABEL_OFFER: offer_hash(offer)},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_export_manifest(
    workload: str, offer: Offer, *, namespace: str, api_version: str
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "ServiceExport",
        "metadata": _metadata(group_name(workload, offer), namespace, workload, offer),
    }


def backend_ref(
    name: str, weight: int, *, port: int, namespace: str, route_namespace: str, mcs_group: str
) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": mcs_group, "kind": "ServiceImport", "name": name}
    if namespace != route_namespace:
        ref["namespace"] = namespace  # needs a ReferenceGrant in that namespace
    ref["port"] = port
    ref["weight"] = weight
    return ref


# -- the executor -------------------------------------------------------------------


@dataclass(frozen=True)
class _Cluster:
    """One configured region's cluster: its clients and where groups go."""

    region_key: str
    where: str
    """How messages name it: ``gcp:us-east4 (context east)``."""
    namespace: str
    capacity_labels: CapacityLabels
    api: k8s.ApiClient
    apps: k8s.AppsV1Api
    core: k8s.CoreV1Api
    custom: k8s.CustomObjectsApi


class KubernetesExecutor:
    """Executor and traffic router on Kubernetes clusters (see the module docstring)."""

    name = "kubernetes"

    def __init__(self, clock: Clock, options: Mapping[str, Any] | None = None) -> None:
        self.clock = clock
        self.options = KubernetesOptions.parse(options or {})
        self._log = structlog.get_logger("arbiter").bind(component="executor", executor=self.name)
        self._clusters = self._connect(self.options)
        self._routing = self._clusters[self.options.routing_cluster]
        self._mcs_group = self.options.mcs_api_version.split("/")[0]

    # -- wiring ---------------------------------------------------------------------

    @staticmethod
    def _client(region_key: str, cluster: ClusterOptions) -> k8s.ApiClient:
        """A client for one cluster, from its kubeconfig file and context."""
        where = f"clusters.{region_key}"
        if cluster.kubeconfig is not None and not cluster.kubeconfig.is_file():
            raise ConfigError(
                f"no kubeconfig file at {cluster.kubeconfig}",
                source="config",
                key=f"executor.options.{where}.kubeconfig",
            )
        configuration = k8s.Configuration()
        configuration.retries = False  # retries are the caller's, declared once
        try:
            client: k8s.ApiClient = kubeconfig.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(cluster.kubeconfig) if cluster.kubeconfig else None,
                context=cluster.context,
                persist_config=False,  # never rewrite the operator's kubeconfig
                client_configuration=configuration,
            )
        except (kubeconfig.ConfigException, OSError, ValueError) as exc:
            key = "context" if cluster.context else "kubeconfig"
            raise ConfigError(
                f"cannot load the kube config: {exc}",
                source="config",
                key=f"executor.options.{where}.{key}",
            ) from exc
        return client

    @classmethod
    def _connect(cls, options: KubernetesOptions) -> dict[str, _Cluster]:
        """One client per distinct (kubeconfig, context); regions may share one.

        When a cluster cannot be reached (a ConfigError, or anything else) that error is
        what is raised, after every client made so far was closed: one failing to close
        is logged and neither replaces it nor leaves the others open."""
        clients: dict[tuple[Path | None, str | None], k8s.ApiClient] = {}
        users: dict[tuple[Path | None, str | None], list[str]] = {}  # names in messages
        out: dict[str, _Cluster] = {}
        try:
            for region_key, cluster in options.clusters.items():
                connection = (cluster.kubeconfig, cluster.context)
                named = f"context {cluster.context}" if cluster.context else cluster.kubeconfig
                where = f"{region_key} ({named})"
                if connection not in clients:
                    clients[connection] = cls._client(region_key, cluster)
                users.setdefault(connection, []).append(where)
                api = clients[connection]
                provider = Provider(region_key.partition(":")[0])
                out[region_key] = _Cluster(
                    region_key=region_key,
                    where=where,
                    namespace=cluster.namespace,
                    capacity_labels=cluster.capacity_labels or DEFAULT_CAPACITY_LABELS[provider],
                    api=api,
                    apps=k8s.AppsV1Api(api),
                    core=k8s.CoreV1Api(api),
                    custom=k8s.CustomObjectsApi(api),
                )
        except Exception:
            try:
                cls._close_clients(
                    (", ".join(users[connection]), api) for connection, api in clients.items()
                )
            except ExecutorError as exc:  # the error that stopped the start is the one to fix
                structlog.get_logger("arbiter").bind(
                    component="executor", executor=cls.name
                ).warning("could not close the clients of a failed start", error=str(exc))
            raise
        return out

    @classmethod
    def _close_clients(cls, clients: Iterable[tuple[str, k8s.ApiClient]]) -> None:
        """Close each ``(used by, client)``'s connection pool, every one even when one
        fails; ExecutorError naming each failure afterwards."""
        from arbiter.executors import close_each

        close_each(cls.name, [(f"the API client of {where}", api.close) for where, api in clients])

    def close(self) -> None:
        """Close the clients' connection pools, every one even when one fails;
        ExecutorError naming each failure afterwards."""
        sharing: dict[int, list[_Cluster]] = {}  # regions may share a client
        for cluster in self._clusters.values():
            sharing.setdefault(id(cluster.api), []).append(cluster)
        self._close_clients(
            (", ".join(c.where for c in clusters), clusters[0].api) for clusters in sharing.values()
        )

    def _template(self, workload: str) -> TemplateOptions:
        return self.options.templates.get(workload, self.options.template)

    def _cluster_for(self, offer: Offer) -> _Cluster:
        cluster = self._clusters.get(offer.region_key)
        if cluster is None:
            raise ExecutorError(
                f"no cluster is configured for region {offer.region_key} (offer {offer.key}); "
                f"configured: {', '.join(sorted(self._clusters))}",
                executor=self.name,
            )
        return cluster

    # -- the boundary ---------------------------------------------------------------

    def _call(self, cluster: _Cluster, action: str, call: Callable[[], T]) -> T:
        """Run one API call; every client error becomes an ExecutorError."""
        try:
            return call()
        except ApiException as exc:
            raise ExecutorError(
                f"{cluster.where}: {action}: {_describe(exc)}", executor=self.name
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ExecutorError(
                f"{cluster.where}: {action}: cannot reach the API server at "
                f"{cluster.api.configuration.host}: {exc}",
                executor=self.name,
            ) from exc
        except ValueError as exc:  # a response the client could not read
            raise ExecutorError(
                f"{cluster.where}: {action}: unreadable response: {exc}", executor=self.name
            ) from exc

    def _read(self, cluster: _Cluster, action: str, call: Callable[[], T]) -> T | None:
        """Like _call, but a missing object (404) is None."""
        return self._call(cluster, action, _none_if(call, 404))

    def _create(self, cluster: _Cluster, action: str, call: Callable[[], object]) -> None:
        """Like _call, but an object that already exists (409) is fine."""
        self._call(cluster, action, _none_if(call, 409))

    def _delete(self, cluster: _Cluster, action: str, call: Callable[[], object]) -> bool:
        """Like _call; False when there was nothing to delete."""
        return self._call(cluster, action, _none_if(call, 404)) is not None

    # -- Executor -------------------------------------------------------------------

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> ReplicaGroup:
        if replicas < 0:
            raise ExecutorError(f"replicas must be ≥ 0, got {replicas}", executor=self.name)
        cluster = self._cluster_for(offer)
        if replicas == 0:
            self._release(cluster, workload.name, offer)
            return ReplicaGroup(workload=workload.name, offer=offer, desired=0, ready=0)
        name = group_name(workload.name, offer)
        ns = cluster.namespace
        found = self._read_deployment(cluster, name)
        if found is None:
            self._create_group(cluster, workload, offer, replicas)
        elif found.spec.replicas != replicas:
            self._call(
                cluster,
                f"scale deployment {ns}/{name}",
                lambda: cluster.apps.patch_namespaced_deployment_scale(
                    name,
                    ns,
                    {"spec": {"replicas": replicas}},
                    _request_timeout=self.options.timeout,
                ),
            )
            self._log.info(
                "~ scale",
                group=group_id(workload.name, offer),
                replicas=replicas,
                was=found.spec.replicas,
                cluster=cluster.region_key,
            )
        deployment = self._read_deployment(cluster, name)
        if deployment is None:
            raise ExecutorError(
                f"{cluster.where}: deployment {ns}/{name} vanished right after it was applied",
                executor=self.name,
            )
        self._check_capacity(cluster, workload.name, offer, replicas, deployment)
        return self._group_of(workload.name, offer, deployment)

    def group(self, workload: str, offer: Offer) -> ReplicaGroup | None:
        cluster = self._cluster_for(offer)
        deployment = self._read_deployment(cluster, group_name(workload, offer))
        if deployment is None:
            return None
        return self._group_of(workload, offer, deployment)

    def groups(self, workload: str | None = None) -> list[ReplicaGroup]:
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if workload is not None:
            selector += f",{LABEL_WORKLOAD}={workload}"
        seen: set[tuple[int, str]] = set()
        out: dict[str, ReplicaGroup] = {}
        for cluster in self._clusters.values():
            place = (id(cluster.api), cluster.namespace)
            if place in seen:
                continue
            seen.add(place)
            listed = self._list_deployments(cluster, selector)
            for deployment in listed:
                group = self._group_from_listing(cluster, deployment)
                if group is not None:
                    out[group.id] = group
        return [out[k] for k in sorted(out)]

    # -- TrafficRouter --------------------------------------------------------------

    def set_weights(self, workload: str, weights: Mapping[str, int]) -> None:
        refs, backends = self._backend_refs(workload, weights)
        attempts = 3
        for _ in range(attempts):
            route = self._read_route(workload)
            if route is None:
                done = self._create_route(workload, refs, backends)
            else:
                rules = (route.get("spec") or {}).get("rules") or [{}]
                annotations = route.get("metadata", {}).get("annotations") or {}
                if (
                    all(rule.get("backendRefs") == refs for rule in rules)
                    and annotations.get(ANNOTATION_BACKENDS) == backends
                ):
                    return
                # One merge patch: every rule's backends at once, the rules' matches and
                # filters as they are; the resourceVersion makes it fail if the route
                # changed since it was read.
                done = self._patch_route(
                    workload,
                    {
                        "metadata": {
                            "resourceVersion": route["metadata"]["resourceVersion"],
                            "annotations": {ANNOTATION_BACKENDS: backends},
                        },
                        "spec": {"rules": [{**rule, "backendRefs": refs} for rule in rules]},
                    },
                )
            if done:
                self._log.info("~ route", workload=workload, weights=_kept(weights))
                return
        routing = self._routing
        raise ExecutorError(
            f"{routing.where}: httproute {routing.namespace}/{workload} kept changing "
            f"while its weights were set ({attempts} attempts)",
            executor=self.name,
        )

    def weights(self, workload: str) -> dict[str, int]:
        route = self._read_route(workload)
        if route is None:
            return {}
        annotation = (route.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_BACKENDS)
        try:
            names: dict[str, str] = json.loads(annotation) if annotation else {}
        except ValueError:
            names = {}
        rules = (route.get("spec") or {}).get("rules") or []
        out: dict[str, int] = {}
        for ref in (rules[0].get("backendRefs") or []) if rules else []:
            weight = int(ref.get("weight", 1))  # Gateway API's default weight is 1
            if weight > 0:
                out[names.get(ref["name"], ref["name"])] = weight
        return out

    def in_flight(self, workload: str, group_id: str) -> int | None:
        return None  # a Gateway does not report it; the caller waits out the drain timeout

    # -- helpers --------------------------------------------------------------------

    def _list_deployments(self, cluster: _Cluster, selector: str) -> list[k8s.V1Deployment]:
        listed = self._call(
            cluster,
            f"list deployments in {cluster.namespace}",
            lambda: cluster.apps.list_namespaced_deployment(
                cluster.namespace, label_selector=selector, _request_timeout=self.options.timeout
            ),
        )
        return list(listed.items or [])

    def _read_deployment(self, cluster: _Cluster, name: str) -> k8s.V1Deployment | None:
        ns = cluster.namespace
        deployment = self._read(
            cluster,
            f"read deployment {ns}/{name}",
            lambda: cluster.apps.read_namespaced_deployment(
                name, ns, _request_timeout=self.options.timeout
            ),
        )
        if deployment is None or _deleting(deployment.metadata):
            return None  # being deleted: it no longer runs the group
        return deployment

    def _group_of(self, workload: str, offer: Offer, deployment: k8s.V1Deployment) -> ReplicaGroup:
        """The group a Deployment runs; its endpoint is the exported Service's
        clusterset DNS name (Multi-Cluster Services)."""
        meta = deployment.metadata or k8s.V1ObjectMeta()
        desired = (deployment.spec.replicas if deployment.spec else None) or 0
        ready = (deployment.status.ready_replicas if deployment.status else None) or 0
        return ReplicaGroup(
            workload=workload,
            offer=offer,
            desired=desired,
            ready=min(ready, desired),  # the status may lag a scale-down
            endpoint=f"http://{meta.name}.{meta.namespace}.svc.clusterset.local:"
            f"{self._template(workload).port}",
        )

    def _group_from_listing(
        self, cluster: _Cluster, deployment: k8s.V1Deployment
    ) -> ReplicaGroup | None:
        meta = deployment.metadata or k8s.V1ObjectMeta()
        if _deleting(meta):
            return None
        key = (meta.annotations or {}).get(ANNOTATION_OFFER_KEY)
        workload = (meta.labels or {}).get(LABEL_WORKLOAD)
        try:
            offer = parse_offer_key(key or "")
            return self._group_of(workload or "", offer, deployment)
        except ValueError as exc:  # a bad annotation or label (edited by hand?)
            self._log.warning(
                "skipping a deployment arbiter cannot read",
                cluster=cluster.region_key,
                deployment=f"{meta.namespace}/{meta.name}",
                error=str(exc),
            )
            return None

    def _create_group(
        self, cluster: _Cluster, workload: Workload, offer: Offer, replicas: int
    ) -> None:
        ns, name = cluster.namespace, group_name(workload.name, offer)
        timeout = self.options.timeout
        service = _typed(
            k8s.V1Service,
            service_manifest(
                workload.name, offer, namespace=ns, port=self._template(workload.name).port
            ),
        )
        group, version = self.options.mcs_api_version.split("/")
        export = service_export_manifest(
            workload.name, offer, namespace=ns, api_version=self.options.mcs_api_version
        )
        deployment = _typed(
            k8s.V1Deployment,
            deployment_manifest(
                workload,
                offer,
                replicas,
                namespace=ns,
                template=self._template(workload.name),
                capacity_labels=cluster.capacity_labels,
                progress_deadline_seconds=round(self.options.progress_deadline),
            ),
        )
        self._create(
            cluster,
            f"create service {ns}/{name}",
            lambda: cluster.core.create_namespaced_service(ns, service, _request_timeout=timeout),
        )
        self._create(
            cluster,
            f"create serviceexport {ns}/{name}",
            lambda: cluster.custom.create_namespaced_custom_object(
                group, version, ns, "serviceexports", export, _request_timeout=timeout
            ),
        )
        self._create(
            cluster,
            f"create deployment {ns}/{name}",
            lambda: cluster.apps.create_namespaced_deployment(
                ns, deployment, _request_timeout=timeout
            ),
        )
        self._log.info(
            "+ place",
            group=group_id(workload.name, offer),
            replicas=replicas,
            cluster=cluster.region_key,
            deployment=f"{ns}/{name}",
        )

    def _release(self, cluster: _Cluster, workload: str, offer: Offer) -> None:
        ns, name = cluster.namespace, group_name(workload, offer)
        timeout = self.options.timeout
        group, version = self.options.mcs_api_version.split("/")
        deleted = self._delete(
            cluster,
            f"delete deployment {ns}/{name}",
            lambda: cluster.apps.delete_namespaced_deployment(name, ns, _request_timeout=timeout),
        )
        # Service and export go too (also when a half-made group has no Deployment).
        self._delete(
            cluster,
            f"delete serviceexport {ns}/{name}",
            lambda: cluster.custom.delete_namespaced_custom_object(
                group, version, ns, "serviceexports", name, _request_timeout=timeout
            ),
        )
        self._delete(
            cluster,
            f"delete service {ns}/{name}",
            lambda: cluster.core.delete_namespaced_service(name, ns, _request_timeout=timeout),
        )
        if deleted:
            self._log.info(
                "- release",
                group=group_id(workload, offer),
                cluster=cluster.region_key,
                deployment=f"{ns}/{name}",
            )

    def _check_capacity(
        self,
        cluster: _Cluster,
        workload: str,
        offer: Offer,
        replicas: int,
        deployment: k8s.V1Deployment,
    ) -> None:
        """Raise CapacityUnavailable (after cutting the group back to its placed pods)
        when the cluster says it cannot place the pods asked for."""
        ns, name = cluster.namespace, group_name(workload, offer)
        selector = f"{LABEL_WORKLOAD}={workload},{LABEL_OFFER}={offer_hash(offer)}"
        pods = self._call(
            cluster,
            f"list pods of {ns}/{name}",
            lambda: cluster.core.list_namespaced_pod(
                ns, label_selector=selector, _request_timeout=self.options.timeout
            ),
        )
        live = [p for p in pods.items or [] if not _deleting(p.metadata)]
        placed = sum(1 for p in live if p.spec and p.spec.node_name)
        if placed >= replicas:
            return
        why = _why_not_placed(
            deployment, live, now=self.clock.now(), grace=self.options.unschedulable_grace
        )
        if why is None:
            return  # still being placed (or the node autoscaler is still at work)
        code, message = why
        self._log.warning(
            "no capacity",
            group=group_id(workload, offer),
            code=code,
            placed=placed,
            asked=replicas,
            cluster=cluster.region_key,
        )
        if placed == 0:
            self._release(cluster, workload, offer)
        else:
            self._call(
                cluster,
                f"scale deployment {ns}/{name} back to its placed pods",
                lambda: cluster.apps.patch_namespaced_deployment_scale(
                    name, ns, {"spec": {"replicas": placed}}, _request_timeout=self.options.timeout
                ),
            )
        raise CapacityUnavailable(
            f"{placed} of {replicas} replicas placed in {cluster.where}: {code}: {message}",
            executor=self.name,
            offer_key=offer.key,
            code=code,
        )

    def _read_route(self, workload: str) -> dict[str, Any] | None:
        routing = self._routing
        route = self._read(
            routing,
            f"read httproute {routing.namespace}/{workload}",
            lambda: routing.custom.get_namespaced_custom_object(
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                routing.namespace,
                "httproutes",
                workload,
                _request_timeout=self.options.timeout,
            ),
        )
        if route is not None and not isinstance(route, dict):
            raise ExecutorError(
                f"{routing.where}: read httproute {routing.namespace}/{workload}: "
                f"expected an object, got {type(route).__name__}",
                executor=self.name,
            )
        return route

    def _create_route(self, workload: str, refs: list[dict[str, Any]], backends: str) -> bool:
        """Create the workload's route; False if it exists already (made meanwhile)."""
        routing = self._routing
        parent: dict[str, Any] = {
            "group": GATEWAY_GROUP,
            "kind": "Gateway",
            "name": self.options.gateway,
        }
        if self.options.gateway_namespace and self.options.gateway_namespace != routing.namespace:
            parent["namespace"] = self.options.gateway_namespace
        spec: dict[str, Any] = {"parentRefs": [parent], "rules": [{"backendRefs": refs}]}
        if self.options.hostnames:
            spec["hostnames"] = list(self.options.hostnames)
        body = {
            "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
            "kind": "HTTPRoute",
            "metadata": {
                "name": workload,
                "namespace": routing.namespace,
                "labels": {LABEL_WORKLOAD: workload, LABEL_MANAGED_BY: MANAGED_BY},
                "annotations": {ANNOTATION_BACKENDS: backends},
            },
            "spec": spec,
        }
        created = self._call(
            routing,
            f"create httproute {routing.namespace}/{workload}",
            _none_if(
                lambda: routing.custom.create_namespaced_custom_object(
                    GATEWAY_GROUP,
                    GATEWAY_VERSION,
                    routing.namespace,
                    "httproutes",
                    body,
                    _request_timeout=self.options.timeout,
                ),
                409,  # created meanwhile by someone else: read it and patch
            ),
        )
        return created is not None

    def _patch_route(self, workload: str, patch: dict[str, Any]) -> bool:
        """Apply a merge patch to the workload's route; False on a resourceVersion conflict."""
        routing = self._routing
        patched = self._call(
            routing,
            f"patch httproute {routing.namespace}/{workload}",
            _none_if(
                lambda: routing.custom.patch_namespaced_custom_object(
                    GATEWAY_GROUP,
                    GATEWAY_VERSION,
                    routing.namespace,
                    "httproutes",
                    workload,
                    patch,
                    _request_timeout=self.options.timeout,
                ),
                409,
            ),
        )
        return patched is not None

    def _backend_refs(
        self, workload: str, weights: Mapping[str, int]
    ) -> tuple[list[dict[str, Any]], str]:
        """The backendRefs for ``weights`` and the annotation naming their groups."""
        refs: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for gid, weight in sorted(weights.items()):
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int)
                or not 0 <= weight <= MAX_WEIGHT
            ):
                raise ExecutorError(
                    f"weight of {gid} must be a whole number in [0, {MAX_WEIGHT}], got {weight!r}",
                    executor=self.name,
                )
            try:
                owner, offer = parse_group_id(gid)
            except ValueError as exc:
                raise ExecutorError(str(exc), executor=self.name) from exc
            if owner != workload:
                raise ExecutorError(
                    f"{gid} is not a group of workload {workload!r}", executor=self.name
                )
            if weight == 0:
                continue
            cluster = self._cluster_for(offer)
            name = group_name(workload, offer)
            names[name] = gid
            refs.append(
                backend_ref(
                    name,
                    weight,
                    port=self._template(workload).port,
                    namespace=cluster.namespace,
                    route_namespace=self._routing.namespace,
                    mcs_group=self._mcs_group,
                )
            )
        return refs, json.dumps(names, sort_keys=True)


M = TypeVar("M", k8s.V1Deployment, k8s.V1Service)


def _typed(model: type[M], manifest: dict[str, Any]) -> M:
    """The client's model of a manifest (what its create calls are typed to take)."""
    built = model.from_dict(manifest)
    if built is None:
        raise ValueError(f"cannot build a {model.__name__} from {manifest!r}")
    return built


def _kept(weights: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(weights.items()) if v > 0}


def _none_if(call: Callable[[], T], status: int) -> Callable[[], T | None]:
    """``call``, answering None instead of raising an ApiException with ``status``."""

    def run() -> T | None:
        try:
            return call()
        except ApiException as exc:
            if exc.status == status:
                return None
            raise

    return run


def _describe(exc: ApiException) -> str:
    """``HTTP 500 InternalError: message`` from an ApiException's Status body."""
    reason, message = exc.reason or "", ""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    if isinstance(body, dict):
        reason = body.get("reason") or reason
        message = body.get("message") or ""
    text = f"HTTP {exc.status} {reason}".rstrip()
    if message:
        text += f": {message}"
    if exc.status in (401, 403):
        text += " (check the credentials and RBAC of this context)"
    return text


def _condition(items: Sequence[C] | None, kind: str) -> C | None:
    for condition in items or []:
        if condition.type == kind:
            return condition
    return None


def _deleting(meta: k8s.V1ObjectMeta | None) -> bool:
    return meta is not None and meta.deletion_timestamp is not None


def _why_not_placed(
    deployment: k8s.V1Deployment, pods: Sequence[k8s.V1Pod], *, now: datetime, grace: float
) -> tuple[str, str] | None:
    """(code, message) when the cluster says pods cannot be placed, else None."""
    conditions = deployment.status.conditions if deployment.status else None
    failure = _condition(conditions, "ReplicaFailure")
    if failure is not None and failure.status == "True":
        return failure.reason or "ReplicaFailure", failure.message or ""
    for pod in pods:
        scheduled = _condition(pod.status.conditions if pod.status else None, "PodScheduled")
        if scheduled is None or scheduled.status != "False" or scheduled.reason != "Unschedulable":
            continue
        since = scheduled.last_transition_time
        if since is None or now - since.astimezone(UTC) >= timedelta(seconds=grace):
            return "Unschedulable", scheduled.message or ""
    progressing = _condition(conditions, "Progressing")
    if (
        progressing is not None
        and progressing.status == "False"
        and progressing.reason == "ProgressDeadlineExceeded"
    ):
        return "ProgressDeadlineExceeded", progressing.message or ""
    return None
