"""A local fake of one Kubernetes cluster's API server, on 127.0.0.1.

It answers exactly the calls the Kubernetes executor makes, the way the real API
server does (JSON bodies, ``Status`` errors with ``reason`` and ``code``, 404 for a
missing object, 409 ``AlreadyExists`` and 409 ``Conflict`` on a stale
``resourceVersion``):

* ``apps/v1`` deployments: create, get, list (``labelSelector``), delete, and the
  ``scale`` subresource (get, patch);
* ``v1`` services: create, get, list, delete; pods: list (``labelSelector``);
* ``serviceexports`` (the Multi-Cluster Services API, any group/version): create, get,
  delete;
* ``gateway.networking.k8s.io/v1`` httproutes: create, get, patch (JSON merge patch,
  honouring ``metadata.resourceVersion`` as a precondition).

It also plays the controllers and the scheduler, synchronously and by the clock it is
given: creating or scaling a Deployment creates or deletes its pods at once (unplaced
ones first when scaling down); a pod is placed unless its ``nodeSelector`` matches a
selector passed to :meth:`FakeKubernetes.exhaust` (then it is ``PodScheduled=False``,
``Unschedulable``, with the scheduler's message) or the namespace's ``gpu_quota`` is
used up (then the pod is not created and the Deployment gets ``ReplicaFailure`` /
``FailedCreate``); a placed pod is ready ``warmup`` after it was placed; a Deployment
not fully available ``progressDeadlineSeconds`` after its last change reports
``Progressing=False`` / ``ProgressDeadlineExceeded``. Pending pods are placed as soon
as capacity returns (:meth:`FakeKubernetes.restore`).

Requests must carry ``Authorization: Bearer <token>``; every request is recorded in
``requests``; :meth:`FakeKubernetes.fail` scripts an error answer. Use it as a context
manager so the server thread and its sockets are closed::

    with FakeKubernetes(clock=clock.now, warmup=timedelta(seconds=30)) as cluster:
        write_kubeconfig(path, {"east": cluster})
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-kubernetes-token"

RESOURCES: dict[str, tuple[str, str]] = {
    # plural -> (API group as in error messages, kind)
    "deployments": ("apps", "Deployment"),
    "services": ("", "Service"),
    "pods": ("", "Pod"),
    "serviceexports": ("multicluster.x-k8s.io", "ServiceExport"),
    "httproutes": ("gateway.networking.k8s.io", "HTTPRoute"),
}
GPU = "nvidia.com/gpu"


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A ``Status`` object as the API server sends it with an error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    """Equality-based label selector (``a=b,c==d,e!=f``), as the executor sends them."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
            continue
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    route: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]


@dataclass
class _Script:
    status: int
    body: dict[str, Any]
    method: str | None


@dataclass
class _Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]
    owner: str
    created: datetime
    placed_at: datetime | None = None
    node: str | None = None
    unschedulable_since: datetime | None = None

    def gpus(self) -> int:
        total = 0
        for container in self.spec.get("containers", []):
            limits = (container.get("resources") or {}).get("limits") or {}
            total += int(limits.get(GPU, 0))
        return total


@dataclass
class _Deployment:
    body: dict[str, Any]
    progress_at: datetime
    pods: list[_Pod] = field(default_factory=list)
    failure: str | None = None
    """Message of the ReplicaFailure condition (pods the quota refused), if any."""


class FakeKubernetes:
    """One cluster's API server (and its controllers) on a free loopback port."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] | None = None,
        warmup: timedelta = timedelta(0),
        token: str = TOKEN,
        nodes: int = 4,
    ) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.warmup = warmup
        """How long a placed pod takes to become ready."""
        self.token = token
        self.nodes = nodes
        """How many nodes the scheduler's messages count."""
        self.gpu_quota: int | None = None
        """GPUs pods of one namespace may request in total (a ResourceQuota); None: no quota."""
        self.requests: list[RecordedRequest] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        """(plural, namespace, name) -> object, for everything but deployments and pods."""
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._exhausted: list[dict[str, str]] = []
        self._scripts: dict[str, deque[_Script]] = {plural: deque() for plural in RESOURCES}
        self._version = 0
        self._counter = 0
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        handler = type("Handler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = False  # join handler threads on close
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-kubernetes",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        return f"http://127.0.0.1:{self._server.server_port}"

    # -- knobs --------------------------------------------------------------------

    def exhaust(self, node_selector: Mapping[str, str]) -> None:
        """Leave no capacity for pods whose nodeSelector includes all of ``node_selector``."""
        with self._lock:
            self._exhausted.append(dict(node_selector))
            self._reconcile_all()

    def restore(self) -> None:
        """Capacity is back: pending pods are placed."""
        with self._lock:
            self._exhausted.clear()
            self._reconcile_all()

    def fail(
        self,
        plural: str,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests on ``plural`` (optionally only those with
        ``method``) with ``status`` and a Status body."""
        if plural not in RESOURCES:
            raise ValueError(f"unknown resource {plural!r}; known: {', '.join(RESOURCES)}")
        default_reason = {500: "InternalError", 503: "ServiceUnavailable", 403: "Forbidden"}
        body = status_body(
            status,
            reason or default_reason.get(status, "Unknown"),
            message or f"injected {status}",
        )
        with self._lock:
            for _ in range(times):
                self._scripts[plural].append(_Script(status, body, method))

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment as the API server would return it now (None if missing)."""
        with self._lock:
            found = self._deployments.get((namespace, name))
            return self._deployment_view(found) if found else None

    def deployments(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                self._deployment_view(d)
                for (ns, _), d in sorted(self._deployments.items())
                if namespace is None or ns == namespace
            ]

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self._reconcile_all()
            return [
                self._pod_view(p)
                for d in self._deployments.values()
                for p in d.pods
                if namespace is None or p.namespace == namespace
            ]

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            if plural == "deployments":
                return self.deployment(namespace, name)
            found = self.objects.get((plural, namespace, name))
            return copy.deepcopy(found) if found else None

    def writes(self) -> list[RecordedRequest]:
        """Every request that could change something (not GET)."""
        with self._lock:
            return [r for r in self.requests if r.method != "GET"]

    # -- the controllers ----------------------------------------------------------

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _stamp(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        now = self.clock()
        self._counter += 1
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["uid"] = f"00000000-0000-4000-8000-{self._counter:012d}"
        meta["resourceVersion"] = self._next_version()
        meta["generation"] = 1
        meta["creationTimestamp"] = _timestamp(now)
        return body

    def _template_hash(self, deployment: _Deployment) -> str:
        template = json.dumps(deployment.body["spec"]["template"], sort_keys=True)
        return hashlib.sha256(template.encode()).hexdigest()[:10]

    def _gpus_in_use(self, namespace: str) -> int:
        return sum(
            p.gpus() for d in self._deployments.values() for p in d.pods if p.namespace == namespace
        )

    def _reconcile_all(self) -> None:
        for deployment in self._deployments.values():
            self._reconcile(deployment)

    def _reconcile(self, deployment: _Deployment) -> None:
        """What the ReplicaSet controller and the scheduler would do by now."""
        now = self.clock()
        meta = deployment.body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        want = int(deployment.body["spec"].get("replicas", 1))
        pods = deployment.pods
        if len(pods) > want:
            # The ReplicaSet controller deletes unplaced, then not-ready, then newest pods.
            pods.sort(
                key=lambda p: (p.node is not None, self._ready(p, now), -p.created.timestamp())
            )
            del pods[: len(pods) - want]
        deployment.failure = None
        template = deployment.body["spec"]["template"]
        replica_set = f"{name}-{self._template_hash(deployment)}"
        while len(pods) < want:
            pod = _Pod(
                name="",
                namespace=namespace,
                labels={**template["metadata"].get("labels", {}), "pod-template-hash": ""},
                spec=copy.deepcopy(template["spec"]),
                owner=replica_set,
                created=now,
            )
            if self.gpu_quota is not None:
                used = self._gpus_in_use(namespace)
                if used + pod.gpus() > self.gpu_quota:
                    deployment.failure = (
                        f'pods "{replica_set}-" is forbidden: exceeded quota: gpu-quota, '
                        f"requested: {GPU}={pod.gpus()}, used: {GPU}={used}, "
                        f"limited: {GPU}={self.gpu_quota}"
                    )
                    break
            self._counter += 1
            pod.name = f"{replica_set}-{self._counter:05x}"
            pod.labels["pod-template-hash"] = replica_set.rsplit("-", 1)[1]
            pods.append(pod)
        for pod in pods:
            if pod.node is not None:
                continue
            selector = pod.spec.get("nodeSelector") or {}
            if any(all(selector.get(k) == v for k, v in ex.items()) for ex in self._exhausted):
                if pod.unschedulable_since is None:
                    pod.unschedulable_since = now
            else:
                pod.node = f"node-{selector.get('node.kubernetes.io/instance-type', 'any')}-1"
                pod.placed_at = now
                pod.unschedulable_since = None

    def _ready(self, pod: _Pod, now: datetime) -> bool:
        return pod.placed_at is not None and now - pod.placed_at >= self.warmup

    def _pod_view(self, pod: _Pod) -> dict[str, Any]:
        now = self.clock()
        spec = copy.deepcopy(pod.spec)
        if pod.node:
            spec["nodeName"] = pod.node
        conditions: list[dict[str, Any]]
        if pod.node is None:
            since = pod.unschedulable_since or pod.created
            message = (
                f"0/{self.nodes} nodes are available: {self.nodes} node(s) didn't match "
                f"Pod's node affinity/selector. preemption: 0/{self.nodes} nodes are "
                f"available: {self.nodes} Preemption is not helpful for scheduling."
            )
            conditions = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": _timestamp(since),
                }
            ]
            status: dict[str, Any] = {
                "phase": "Pending",
                "conditions": conditions,
                "qosClass": "Burstable",
            }
        else:
            assert pod.placed_at is not None
            ready = self._ready(pod, now)
            flag = "True" if ready else "False"
            placed = _timestamp(pod.placed_at)
            became = _timestamp(pod.placed_at + self.warmup) if ready else placed
            conditions = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": placed},
                {"type": "Initialized", "status": "True", "lastTransitionTime": placed},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": became},
                {"type": "Ready", "status": flag, "lastTransitionTime": became},
            ]
            if not ready:
                for c in conditions[2:]:
                    c["reason"] = "ContainersNotReady"
            status = {
                "phase": "Running",
                "conditions": conditions,
                "hostIP": "10.0.0.1",
                "podIP": "10.1.0.1",
                "startTime": placed,
                "qosClass": "Burstable",
            }
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": dict(pod.labels),
                "creationTimestamp": _timestamp(pod.created),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": pod.owner,
                        "uid": "00000000-0000-4000-8000-000000000000",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": status,
        }

    def _deployment_view(self, deployment: _Deployment) -> dict[str, Any]:
        self._reconcile(deployment)
        now = self.clock()
        body = copy.deepcopy(deployment.body)
        spec = body["spec"]
        want = int(spec.get("replicas", 1))
        pods = deployment.pods
        ready = sum(1 for p in pods if self._ready(p, now))
        stamp = _timestamp(deployment.progress_at)
        max_unavailable = want // 4  # the default rolling update's 25%, rounded down
        conditions = [
            {
                "type": "Available",
                "status": "True" if ready >= want - max_unavailable else "False",
                "reason": "MinimumReplicasAvailable"
                if ready >= want - max_unavailable
                else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if ready >= want - max_unavailable
                else "Deployment does not have minimum availability.",
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
            }
        ]
        deadline = timedelta(seconds=int(spec.get("progressDeadlineSeconds", 600)))
        replica_set = f"{body['metadata']['name']}-{self._template_hash(deployment)}"
        if ready >= want:
            progressing = ("True", "NewReplicaSetAvailable", "has successfully progressed.")
        elif now - deployment.progress_at > deadline:
            progressing = ("False", "ProgressDeadlineExceeded", "has timed out progressing.")
        else:
            progressing = ("True", "ReplicaSetUpdated", "is progressing.")
        conditions.append(
            {
                "type": "Progressing",
                "status": progressing[0],
                "reason": progressing[1],
                "message": f'ReplicaSet "{replica_set}" {progressing[2]}',
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
        if deployment.failure:
            conditions.append(
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": deployment.failure,
                    "lastUpdateTime": _timestamp(now),
                    "lastTransitionTime": _timestamp(now),
                }
            )
        status: dict[str, Any] = {
            "observedGeneration": body["metadata"]["generation"],
            "conditions": conditions,
        }
        # Like the real API server, zero counts are left out.
        counts = {
            "replicas": len(pods),
            "updatedReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": len(pods) - ready,
        }
        status.update({k: v for k, v in counts.items() if v})
        body["status"] = status
        return body

    # -- answers ------------------------------------------------------------------

    def answer(
        self,
        method: str,
        plural: str,
        namespace: str,
        name: str | None,
        sub: str | None,
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any]:
        with self._lock:
            if plural == "deployments":
                return self._answer_deployments(method, namespace, name, sub, query, body)
            if plural == "pods":
                if method == "GET" and name is None:
                    selector = query.get("labelSelector", [""])[0]
                    self._reconcile_all()
                    items = [
                        self._pod_view(p)
                        for d in self._deployments.values()
                        for p in d.pods
                        if p.namespace == namespace and _matches(p.labels, selector)
                    ]
                    return 200, self._list("Pod", "v1", items)
                return self._not_allowed(method)
            return self._answer_objects(method, plural, namespace, name, query, body)

    def _list(self, kind: str, api_version: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def _not_found(self, plural: str, name: str) -> tuple[int, Any]:
        group = RESOURCES[plural][0]
        qualified = f"{plural}.{group}" if group else plural
        return 404, status_body(
            404, "NotFound", f'{qualified} "{name}" not found', name=name, kind=plural
        )

    def _not_allowed(self, method: str) -> tuple[int, Any]:
        return 405, status_body(405, "MethodNotAllowed", f"the server does not allow {method}")

    def _answer_deployments(
        self,
        method: str,
        namespace: str,
        name: str | None,
        sub: str | None,
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any]:
        now = self.clock()
        if name is None:
            if method == "GET":
                selector = query.get("labelSelector", [""])[0]
                items = [
                    self._deployment_view(d)
                    for (ns, _), d in sorted(self._deployments.items())
                    if ns == namespace
                    and _matches(d.body["metadata"].get("labels") or {}, selector)
                ]
                return 200, self._list("Deployment", "apps/v1", items)
            if method == "POST":
                new_name = body["metadata"]["name"]
                if (namespace, new_name) in self._deployments:
                    return 409, status_body(
                        409,
                        "AlreadyExists",
                        f'deployments.apps "{new_name}" already exists',
                        name=new_name,
                        group="apps",
                        kind="deployments",
                    )
                stamped = self._stamp(copy.deepcopy(body), namespace)
                stamped["spec"].setdefault("replicas", 1)
                stamped["spec"].setdefault("progressDeadlineSeconds", 600)
                created = _Deployment(body=stamped, progress_at=now)
                self._deployments[(namespace, new_name)] = created
                return 201, self._deployment_view(created)
            return self._not_allowed(method)
        found = self._deployments.get((namespace, name))
        if found is None:
            return self._not_found("deployments", name)
        if sub == "scale":
            if method == "PATCH":
                replicas = ((body or {}).get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    return 422, status_body(422, "Invalid", "spec.replicas: Invalid value")
                if replicas != found.body["spec"]["replicas"]:
                    found.body["spec"]["replicas"] = replicas
                    found.body["metadata"]["generation"] += 1
                    found.body["metadata"]["resourceVersion"] = self._next_version()
                    found.progress_at = now
            elif method != "GET":
                return self._not_allowed(method)
            view = self._deployment_view(found)
            labels = view["spec"]["selector"]["matchLabels"]
            return 200, {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": view["metadata"]["resourceVersion"],
                },
                "spec": {"replicas": view["spec"]["replicas"]},
                "status": {
                    "replicas": view["status"].get("replicas", 0),
                    "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                },
            }
        if method == "GET":
            return 200, self._deployment_view(found)
        if method == "DELETE":
            del self._deployments[(namespace, name)]
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": "apps", "kind": "deployments"},
            }
        return self._not_allowed(method)

    def _answer_objects(
        self,
        method: str,
        plural: str,
        namespace: str,
        name: str | None,
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any]:
        if name is None:
            if method == "GET":
                selector = query.get("labelSelector", [""])[0]
                items = [
                    copy.deepcopy(obj)
                    for (p, ns, _), obj in sorted(self.objects.items())
                    if p == plural
                    and ns == namespace
                    and _matches(obj["metadata"].get("labels") or {}, selector)
                ]
                return 200, self._list(RESOURCES[plural][1], "v1", items)
            if method == "POST":
                new_name = body["metadata"]["name"]
                key = (plural, namespace, new_name)
                if key in self.objects:
                    group = RESOURCES[plural][0]
                    qualified = f"{plural}.{group}" if group else plural
                    return 409, status_body(
                        409,
                        "AlreadyExists",
                        f'{qualified} "{new_name}" already exists',
                        name=new_name,
                        kind=plural,
                    )
                stamped = self._stamp(copy.deepcopy(body), namespace)
                if plural == "services":
                    spec = stamped.setdefault("spec", {})
                    spec.setdefault("type", "ClusterIP")
                    spec["clusterIP"] = f"10.96.0.{self._counter % 250 + 1}"
                self.objects[key] = stamped
                return 201, copy.deepcopy(stamped)
            return self._not_allowed(method)
        key = (plural, namespace, name)
        found = self.objects.get(key)
        if found is None:
            return self._not_found(plural, name)
        if method == "GET":
            return 200, copy.deepcopy(found)
        if method == "DELETE":
            del self.objects[key]
            return 200, copy.deepcopy(found)
        if method == "PATCH" and plural == "httproutes":
            wanted = ((body or {}).get("metadata") or {}).get("resourceVersion")
            current = found["metadata"]["resourceVersion"]
            if wanted is not None and wanted != current:
                return 409, status_body(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural}.{RESOURCES[plural][0]} "{name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                    name=name,
                    kind=plural,
                )
            patched = merge_patch(found, body)
            patched["metadata"]["resourceVersion"] = self._next_version()
            patched["metadata"]["generation"] = found["metadata"].get("generation", 1) + 1
            self.objects[key] = patched
            return 200, copy.deepcopy(patched)
        return self._not_allowed(method)

    def _next_script(self, plural: str, method: str) -> _Script | None:
        with self._lock:
            queue = self._scripts.get(plural)
            if not queue:
                return None
            for script in list(queue):
                if script.method is None or script.method == method:
                    queue.remove(script)
                    return script
            return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _route(path: str) -> tuple[str, str, str | None, str | None] | None:
    """(plural, namespace, name, subresource) of a namespaced resource path."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        return None
    if len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in RESOURCES:
        return None
    namespace, plural = rest[1], rest[2]
    name = rest[3] if len(rest) > 3 else None
    sub = rest[4] if len(rest) > 4 else None
    if len(rest) > 5:
        return None
    return plural, namespace, name, sub


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubernetes
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(400, status_body(400, "BadRequest", "the body is not JSON"))
            return
        routed = _route(split.path)
        plural = routed[0] if routed else "unknown"
        self.fake._record(RecordedRequest(method, plural, split.path, query, body, headers))
        if headers.get("authorization") != f"Bearer {self.fake.token}":
            self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        if routed is None:
            self._send(
                404,
                status_body(404, "NotFound", "the server could not find the requested resource"),
            )
            return
        script = self.fake._next_script(plural, method)
        if script is not None:
            self._send(script.status, script.body)
            return
        if method == "PATCH" and "json-patch" in headers.get("content-type", ""):
            self._send(
                415, status_body(415, "UnsupportedMediaType", "json-patch is not supported here")
            )
            return
        status, answer = self.fake.answer(method, *routed, query, body)
        self._send(status, answer)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


def write_kubeconfig(
    path: Path, clusters: Mapping[str, FakeKubernetes], *, token: str = TOKEN
) -> Path:
    """A kubeconfig with one context per fake cluster, named by the mapping's keys
    (the first is the current context)."""
    names = list(clusters)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": c.url}} for n, c in clusters.items()],
        "users": [{"name": "arbiter", "user": {"token": token}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "arbiter"}} for n in names],
        "current-context": names[0] if names else "",
    }
    path.write_text(json.dumps(config, indent=2))
    return path
