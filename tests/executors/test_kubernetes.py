"""The Kubernetes executor, driven through the real kubernetes client against two
local fake API servers (one per region's cluster) on 127.0.0.1."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from arbiter.domain.market import Market, Offer, Provider
from arbiter.errors import CapacityUnavailable, ConfigError, ExecutorError
from arbiter.executors import make_executor
from arbiter.executors.kubernetes import (
    ANNOTATION_BACKENDS,
    KubernetesExecutor,
    KubernetesOptions,
    group_name,
    node_placement,
    offer_hash,
    parse_offer_key,
)
from arbiter.ports import FakeClock
from tests.executors.contract import OTHER, START, WORKLOAD, A, B, ExecutorContract, Harness
from tests.fakes.kubernetes import FakeKubernetes, write_kubeconfig

WARMUP = timedelta(seconds=30)
NS = "inference"


@dataclass
class Rig:
    clock: FakeClock
    east: FakeKubernetes
    """Serves gcp:us-east4 and holds the HTTPRoutes."""
    west: FakeKubernetes
    """Serves aws:us-east-1."""
    options: dict[str, Any]
    executor: KubernetesExecutor

    def fake_for(self, offer: Offer) -> FakeKubernetes:
        return self.east if offer.region_key == A.region_key else self.west

    def restart(self) -> KubernetesExecutor:
        return KubernetesExecutor(self.clock, self.options)

    def exhaust(self, offer: Offer) -> None:
        self.fake_for(offer).exhaust({"node.kubernetes.io/instance-type": offer.instance_type})


def options_for(east_config: Path, west_config: Path, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "clusters": {
            # one by a context of a shared kubeconfig, one by its own file's current context
            A.region_key: {"kubeconfig": str(east_config), "context": "east", "namespace": NS},
            B.region_key: {"kubeconfig": str(west_config), "namespace": NS},
        },
        "routing_cluster": A.region_key,
        "gateway": "inference-gateway",
        "gateway_namespace": "gateways",
        "hostnames": ["chat.example.com"],
        "template": {
            "image": "vllm/vllm-openai:v0.6.3",
            "port": 8000,
            "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct"],
            "env": {"HF_HOME": "/models"},
            "requests": {"cpu": "4", "memory": "16Gi"},
            "readiness_path": "/health",
        },
        "unschedulable_grace": "0s",
    }
    options.update(overrides)
    return options


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock(START)
    with (
        FakeKubernetes(clock=clock.now, warmup=WARMUP) as east,
        FakeKubernetes(clock=clock.now, warmup=WARMUP) as west,
    ):
        east_config = write_kubeconfig(tmp_path / "east.kubeconfig", {"other": west, "east": east})
        west_config = write_kubeconfig(tmp_path / "west.kubeconfig", {"west": west})
        options = options_for(east_config, west_config)
        executor = KubernetesExecutor(clock, options)
        yield Rig(clock, east, west, options, executor)
        executor.close()


class TestKubernetesExecutor(ExecutorContract):
    @pytest.fixture
    def h(self, rig: Rig) -> Iterator[Harness]:
        def wait_ready() -> None:
            rig.clock.advance(WARMUP)

        yield Harness(rig.executor, wait_ready, rig.exhaust)


# -- replica groups as Deployments --------------------------------------------------


def test_a_group_is_a_deployment_named_by_workload_and_offer_hash(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, A, 2)
    name = f"chat-{offer_hash(A)}"
    deployment = rig.east.deployment(NS, name)
    assert deployment is not None
    assert deployment["metadata"]["labels"] == {
        "arbiter.dev/workload": "chat",
        "arbiter.dev/offer": offer_hash(A),
        "app.kubernetes.io/managed-by": "arbiter",
    }
    assert deployment["metadata"]["annotations"]["arbiter.dev/offer-key"] == A.key
    assert deployment["spec"]["replicas"] == 2
    assert rig.west.deployments() == []


def test_the_deployment_asks_for_the_workloads_gpus(rig: Rig) -> None:
    four_gpus = WORKLOAD.model_copy(update={"gpus_per_replica": 4})
    rig.executor.ensure(four_gpus, A, 1)
    deployment = rig.east.deployment(NS, group_name("chat", A))
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "4"},
        "limits": {"nvidia.com/gpu": "4"},
    }
    assert container["image"] == "vllm/vllm-openai:v0.6.3"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["env"] == [{"name": "HF_HOME", "value": "/models"}]


def test_a_gke_spot_offer_selects_spot_nodes_of_its_instance_type(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, A, 1)
    deployment = rig.east.deployment(NS, group_name("chat", A))
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "node.kubernetes.io/instance-type": "g2-standard-4",
        "cloud.google.com/gke-spot": "true",
    }
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
            "effect": "NoSchedule"} in pod["tolerations"]  # fmt: skip
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_an_aws_on_demand_offer_selects_karpenter_on_demand_capacity(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, B, 1)
    deployment = rig.west.deployment(NS, group_name("chat", B))
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {
        "node.kubernetes.io/instance-type": "g6.xlarge",
        "karpenter.sh/capacity-type": "on-demand",
    }


def make_offer(
    provider: str, region: str, zone: str | None, instance_type: str, market: str
) -> Offer:
    return Offer(
        provider=Provider(provider),
        region=region,
        zone=zone,
        instance_type=instance_type,
        market=Market(market),
    )


@pytest.mark.parametrize(
    ("offer", "labels", "selector", "not_in"),
    [
        (
            make_offer("aws", "us-east-1", "use1-az4", "p5.48xlarge", "spot"),
            "eks",
            {"topology.k8s.aws/zone-id": "use1-az4", "eks.amazonaws.com/capacityType": "SPOT"},
            None,
        ),
        (
            make_offer("gcp", "us-east4", "us-east4-a", "a3-highgpu-8g", "on-demand"),
            "gke",
            {"topology.kubernetes.io/zone": "us-east4-a"},
            ("cloud.google.com/gke-spot", ["true"]),
        ),
        (
            make_offer("azure", "eastus", "2", "Standard_NC24ads_A100_v4", "spot"),
            "aks",
            {
                "topology.kubernetes.io/zone": "eastus-2",
                "kubernetes.azure.com/scalesetpriority": "spot",
            },
            None,
        ),
        (
            make_offer("azure", "eastus", None, "Standard_NC24ads_A100_v4", "on-demand"),
            "aks",
            {},
            ("kubernetes.azure.com/scalesetpriority", ["spot"]),
        ),
    ],
)
def test_node_placement_maps_zone_and_capacity_type_per_platform(
    offer: Offer, labels: Any, selector: dict[str, str], not_in: tuple[str, list[str]] | None
) -> None:
    placement = node_placement(offer, labels)
    assert placement["nodeSelector"] == {
        "node.kubernetes.io/instance-type": offer.instance_type,
        **selector,
    }
    if not_in is None:
        assert "affinity" not in placement
    else:
        terms = placement["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms == [
            {"matchExpressions": [{"key": not_in[0], "operator": "NotIn", "values": not_in[1]}]}
        ]


def test_a_workload_with_its_own_template_runs_it(rig: Rig) -> None:
    tei = {"image": "ghcr.io/huggingface/text-embeddings-inference:1.5", "port": 80}
    executor = KubernetesExecutor(rig.clock, {**rig.options, "templates": {"embed": tei}})
    try:
        group = executor.ensure(OTHER, A, 1)
        executor.set_weights("embed", {group.id: 1})
    finally:
        executor.close()
    name = group_name("embed", A)
    deployment = rig.east.deployment(NS, name)
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["ports"][0]["containerPort"]) == (tei["image"], 80)
    assert "readinessProbe" not in container
    service = rig.east.get("services", NS, name)
    assert service is not None and service["spec"]["ports"][0]["port"] == 80
    route = rig.east.get("httproutes", NS, "embed")
    assert route is not None and route["spec"]["rules"][0]["backendRefs"][0]["port"] == 80


def test_a_group_gets_a_service_and_a_service_export_of_the_same_name(rig: Rig) -> None:
    group = rig.executor.ensure(WORKLOAD, B, 1)
    name = group_name("chat", B)
    service = rig.west.get("services", NS, name)
    assert service is not None
    assert service["spec"]["selector"] == {
        "arbiter.dev/workload": "chat",
        "arbiter.dev/offer": offer_hash(B),
    }
    assert service["spec"]["ports"][0]["port"] == 8000
    assert rig.west.get("serviceexports", NS, name) is not None
    assert group.endpoint == f"http://{name}.{NS}.svc.clusterset.local:8000"


def test_releasing_a_group_deletes_its_deployment_service_and_export(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, B, 1)
    rig.executor.ensure(WORKLOAD, B, 0)
    name = group_name("chat", B)
    assert rig.west.deployment(NS, name) is None
    assert rig.west.get("services", NS, name) is None
    assert rig.west.get("serviceexports", NS, name) is None
    assert rig.west.pods() == []


def test_ready_counts_only_pods_past_their_readiness_check(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, A, 2)
    rig.clock.advance(WARMUP / 2)
    group = rig.executor.group("chat", A)
    assert group is not None and (group.desired, group.ready) == (2, 0)


def test_a_restarted_executor_finds_the_groups_and_reapplies_nothing(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, A, 2)
    rig.executor.ensure(WORKLOAD, B, 1)
    rig.clock.advance(WARMUP)
    before = len(rig.east.writes()) + len(rig.west.writes())

    restarted = rig.restart()
    try:
        assert {(g.offer, g.desired, g.ready) for g in restarted.groups("chat")} == {
            (A, 2, 2),
            (B, 1, 1),
        }
        again = restarted.ensure(WORKLOAD, A, 2)
    finally:
        restarted.close()

    assert (again.desired, again.ready) == (2, 2)
    assert len(rig.east.writes()) + len(rig.west.writes()) == before


def test_groups_also_lists_groups_nobody_asked_this_executor_for(rig: Rig) -> None:
    """What a crash may have orphaned is found by label, in every configured cluster."""
    other = rig.restart()
    try:
        other.ensure(OTHER, B, 1)
    finally:
        other.close()
    assert [g.id for g in rig.executor.groups()] == [f"embed@{B.key}"]


def test_an_offer_in_a_region_without_a_cluster_is_an_executor_error(rig: Rig) -> None:
    elsewhere = make_offer("azure", "westeurope", None, "NC4as", "spot")
    with pytest.raises(ExecutorError) as caught:
        rig.executor.ensure(WORKLOAD, elsewhere, 1)
    assert "azure:westeurope" in str(caught.value)
    assert "aws:us-east-1, gcp:us-east4" in str(caught.value)


# -- capacity -----------------------------------------------------------------------


def test_unschedulable_pods_are_tolerated_for_the_grace_period(rig: Rig) -> None:
    patient = KubernetesExecutor(rig.clock, {**rig.options, "unschedulable_grace": "10m"})
    try:
        rig.exhaust(A)
        first = patient.ensure(WORKLOAD, A, 2)  # a node autoscaler may still add a node
        assert (first.desired, first.ready) == (2, 0)
        rig.clock.advance(timedelta(minutes=10))
        with pytest.raises(CapacityUnavailable) as caught:
            patient.ensure(WORKLOAD, A, 2)
    finally:
        patient.close()
    assert caught.value.code == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in str(caught.value)
    assert rig.east.deployment(NS, group_name("chat", A)) is None


def test_no_capacity_for_more_replicas_cuts_the_group_back_to_its_placed_pods(rig: Rig) -> None:
    rig.executor.ensure(WORKLOAD, A, 1)
    rig.clock.advance(WARMUP)
    rig.exhaust(A)
    with pytest.raises(CapacityUnavailable) as caught:
        rig.executor.ensure(WORKLOAD, A, 3)
    assert "1 of 3 replicas placed" in str(caught.value)
    group = rig.executor.group("chat", A)
    assert group is not None and (group.desired, group.ready) == (1, 1)
    assert len(rig.east.pods(NS)) == 1


def test_a_gpu_quota_refusing_pods_is_capacity_unavailable(rig: Rig) -> None:
    rig.west.gpu_quota = 1
    with pytest.raises(CapacityUnavailable) as caught:
        rig.executor.ensure(WORKLOAD, B, 2)
    assert caught.value.code == "FailedCreate"
    assert "exceeded quota" in str(caught.value)
    group = rig.executor.group("chat", B)
    assert group is not None and group.desired == 1


def test_a_progress_deadline_exceeded_with_unplaced_pods_is_capacity_unavailable(
    rig: Rig,
) -> None:
    patient = KubernetesExecutor(
        rig.clock, {**rig.options, "unschedulable_grace": "2h", "progress_deadline": "20m"}
    )
    try:
        rig.exhaust(B)
        patient.ensure(WORKLOAD, B, 1)
        assert (
            rig.west.deployment(NS, group_name("chat", B))["spec"][  # type: ignore[index]
                "progressDeadlineSeconds"
            ]
            == 1200
        )
        rig.clock.advance(timedelta(minutes=21))
        with pytest.raises(CapacityUnavailable) as caught:
            patient.ensure(WORKLOAD, B, 1)
    finally:
        patient.close()
    assert caught.value.code == "ProgressDeadlineExceeded"


def test_capacity_coming_back_lets_the_offer_be_used_again(rig: Rig) -> None:
    rig.exhaust(A)
    with pytest.raises(CapacityUnavailable):
        rig.executor.ensure(WORKLOAD, A, 1)
    rig.east.restore()
    assert rig.executor.ensure(WORKLOAD, A, 1).desired == 1


# -- traffic ------------------------------------------------------------------------


def test_set_weights_writes_the_split_into_the_workloads_httproute(rig: Rig) -> None:
    a = rig.executor.ensure(WORKLOAD, A, 1)
    b = rig.executor.ensure(WORKLOAD, B, 1)
    rig.executor.set_weights("chat", {a.id: 30, b.id: 70})

    route = rig.east.get("httproutes", NS, "chat")
    assert route is not None
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateways",
        }
    ]
    assert route["spec"]["hostnames"] == ["chat.example.com"]
    assert route["spec"]["rules"] == [
        {
            "backendRefs": [
                {"group": "multicluster.x-k8s.io", "kind": "ServiceImport",
                 "name": group_name("chat", B), "port": 8000, "weight": 70},
                {"group": "multicluster.x-k8s.io", "kind": "ServiceImport",
                 "name": group_name("chat", A), "port": 8000, "weight": 30},
            ]
        }
    ]  # fmt: skip
    assert json.loads(route["metadata"]["annotations"][ANNOTATION_BACKENDS]) == {
        group_name("chat", A): a.id,
        group_name("chat", B): b.id,
    }
    assert rig.west.get("httproutes", NS, "chat") is None
    assert rig.executor.weights("chat") == {a.id: 30, b.id: 70}


def test_new_weights_replace_the_backends_in_one_patch_keeping_the_rules_matches(
    rig: Rig,
) -> None:
    a, b = (f"chat@{A.key}", f"chat@{B.key}")
    rig.executor.set_weights("chat", {a: 1})
    # An operator narrowed the rule; arbiter must only touch its backends.
    route = rig.east.objects[("httproutes", NS, "chat")]
    route["spec"]["rules"][0]["matches"] = [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    patches_before = [r for r in rig.east.writes() if r.method == "PATCH"]

    rig.executor.set_weights("chat", {a: 0, b: 5})

    patches = [r for r in rig.east.writes() if r.method == "PATCH"][len(patches_before) :]
    assert len(patches) == 1
    rule = rig.east.objects[("httproutes", NS, "chat")]["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [(group_name("chat", B), 5)]


def test_setting_the_same_weights_again_writes_nothing(rig: Rig) -> None:
    weights = {f"chat@{A.key}": 1, f"chat@{B.key}": 1}
    rig.executor.set_weights("chat", weights)
    writes = len(rig.east.writes())
    rig.executor.set_weights("chat", weights)
    assert len(rig.east.writes()) == writes


def test_a_route_changed_by_someone_else_meanwhile_is_read_again(rig: Rig) -> None:
    rig.executor.set_weights("chat", {f"chat@{A.key}": 1})
    rig.east.fail("httproutes", 409, method="PATCH", reason="Conflict", message="modified")
    rig.executor.set_weights("chat", {f"chat@{B.key}": 1})
    assert rig.executor.weights("chat") == {f"chat@{B.key}": 1}


def test_a_route_that_keeps_changing_is_an_executor_error(rig: Rig) -> None:
    rig.executor.set_weights("chat", {f"chat@{A.key}": 1})
    rig.east.fail("httproutes", 409, times=3, method="PATCH", reason="Conflict")
    with pytest.raises(ExecutorError, match="kept changing while its weights were set"):
        rig.executor.set_weights("chat", {f"chat@{B.key}": 1})


def test_a_route_created_meanwhile_by_someone_else_is_patched(rig: Rig) -> None:
    rig.east.objects[("httproutes", NS, "chat")] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "chat", "namespace": NS, "resourceVersion": "7"},
        "spec": {"rules": [{"backendRefs": []}]},
    }
    rig.east.fail("httproutes", 404, method="GET", reason="NotFound")  # the first read misses it

    rig.executor.set_weights("chat", {f"chat@{A.key}": 2})

    assert [r.method for r in rig.east.requests if r.route == "httproutes"] == [
        "GET", "POST", "GET", "PATCH"
    ]  # fmt: skip
    assert rig.executor.weights("chat") == {f"chat@{A.key}": 2}


def test_weights_for_another_workloads_group_are_refused(rig: Rig) -> None:
    with pytest.raises(ExecutorError, match="not a group of workload 'chat'"):
        rig.executor.set_weights("chat", {f"embed@{A.key}": 1})


def test_negative_weights_are_refused(rig: Rig) -> None:
    with pytest.raises(ExecutorError, match=r"whole number in \[0, 1000000\]"):
        rig.executor.set_weights("chat", {f"chat@{A.key}": -1})


def test_a_workload_without_a_route_has_no_weights(rig: Rig) -> None:
    assert rig.executor.weights("chat") == {}


def test_in_flight_is_unknown_so_the_caller_waits_out_the_drain(rig: Rig) -> None:
    assert rig.executor.in_flight("chat", f"chat@{A.key}") is None


# -- errors at the boundary ---------------------------------------------------------


def test_an_api_server_error_becomes_an_executor_error(rig: Rig) -> None:
    rig.east.fail("deployments", 500, message="etcdserver: request timed out")
    with pytest.raises(ExecutorError) as caught:
        rig.executor.ensure(WORKLOAD, A, 1)
    assert type(caught.value) is ExecutorError
    message = str(caught.value)
    assert "gcp:us-east4 (context east)" in message
    assert "HTTP 500 InternalError: etcdserver: request timed out" in message
    assert type(caught.value.__cause__).__name__.endswith("Exception")  # the ApiException


def test_refused_credentials_become_an_executor_error_naming_them(rig: Rig) -> None:
    rig.west.token = "rotated"
    with pytest.raises(ExecutorError, match=r"HTTP 401 Unauthorized.*credentials"):
        rig.executor.group("chat", B)


def test_an_unreachable_api_server_becomes_an_executor_error(rig: Rig) -> None:
    url = rig.west.url
    rig.west.close()
    with pytest.raises(ExecutorError, match=f"cannot reach the API server at {url}"):
        rig.executor.groups()


def test_a_failed_route_update_becomes_an_executor_error(rig: Rig) -> None:
    rig.east.fail("httproutes", 403, method="GET", message="cannot get httproutes")
    with pytest.raises(ExecutorError, match="read httproute inference/chat: HTTP 403 Forbidden"):
        rig.executor.set_weights("chat", {f"chat@{A.key}": 1})


# -- options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda o: o.update(colour="blue"), "colour", "unknown option; known: clusters"),
        (lambda o: o["template"].pop("image"), "template.image", "Field required"),
        (lambda o: o["template"].update(limits={"nvidia.com/gpu": "2"}), "template.limits",
         "gpus_per_replica"),
        (lambda o: o["template"].update(colour="blue"), "template.colour",
         "unknown option; known: image"),
        (lambda o: o.update(templates={"chat": {"image": "x", "colour": "blue"}}),
         "templates.chat.colour", "unknown option; known: image"),
        (lambda o: o.update(routing_cluster="aws:eu-west-1"), "routing_cluster",
         "not one of the clusters: aws:us-east-1, gcp:us-east4"),
        (lambda o: o["clusters"].update({"us-east-2": {"context": "x"}}), "clusters",
         "keys are provider:region"),
        (lambda o: o["clusters"].update({"aws:us-east-2": {}}), "clusters.aws:us-east-2",
         "give a context, a kubeconfig file, or both"),
        (lambda o: o["clusters"]["aws:us-east-1"].update(namespace="Bad_NS"),
         "clusters.aws:us-east-1.namespace", "pattern"),
        (lambda o: o.update(unschedulable_grace="soon"), "unschedulable_grace",
         "expected a duration"),
        (lambda o: o.update(unschedulable_grace=[10, "m"]), "unschedulable_grace",
         "expected a duration like '30s', '5m', '1h30m', got a list"),
        (lambda o: o.update(timeout={"seconds": 30}), "timeout",
         "expected a duration like '30s', '5m', '1h30m', got a table"),
        (lambda o: o.update(timeout="0s"), "timeout", "longer than zero"),
    ],
)  # fmt: skip
def test_bad_options_are_config_errors_naming_the_key(
    rig: Rig, change: Any, key: str | None, message: str
) -> None:
    options = json.loads(json.dumps(rig.options))
    change(options)
    with pytest.raises(ConfigError) as caught:
        KubernetesExecutor(rig.clock, options)
    assert caught.value.source == "config"
    assert caught.value.key == f"executor.options.{key}"
    assert message in str(caught.value)


def test_the_documented_example_options_are_valid() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "executors" / "kubernetes.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    options = KubernetesOptions.parse(tomllib.loads(example)["executor"]["options"])
    assert options.clusters["aws:us-east-1"].capacity_labels == "karpenter"
    assert options.unschedulable_grace == 600
    assert options.templates["embed"].port == 80


def test_a_missing_kube_context_is_a_config_error_naming_the_cluster(rig: Rig) -> None:
    options = json.loads(json.dumps(rig.options))
    options["clusters"][A.region_key]["context"] = "nowhere"
    with pytest.raises(ConfigError) as caught:
        KubernetesExecutor(rig.clock, options)
    assert caught.value.key == "executor.options.clusters.gcp:us-east4.context"


def test_a_missing_kubeconfig_file_is_a_config_error(rig: Rig, tmp_path: Path) -> None:
    options = json.loads(json.dumps(rig.options))
    options["clusters"][B.region_key]["kubeconfig"] = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match="no kubeconfig file at") as caught:
        KubernetesExecutor(rig.clock, options)
    assert caught.value.key == "executor.options.clusters.aws:us-east-1.kubeconfig"


def test_a_config_error_while_connecting_closes_every_client_made_and_is_what_is_raised(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The east client failing to close neither replaces the config error (the third
    cluster's missing kubeconfig) nor leaves the west client open; it is logged."""
    options = json.loads(json.dumps(rig.options))
    options["clusters"]["azure:eastus"] = {"kubeconfig": str(tmp_path / "absent")}
    closed: list[str] = []
    real_client = KubernetesExecutor._client

    def client(region_key: str, cluster: Any) -> Any:
        api = real_client(region_key, cluster)
        real_close = api.close

        def close() -> None:
            closed.append(region_key)
            real_close()
            if region_key == A.region_key:
                raise OSError("pool already torn down")

        monkeypatch.setattr(api, "close", close)
        return api

    monkeypatch.setattr(KubernetesExecutor, "_client", staticmethod(client))
    with (
        capture_logs() as logs,
        pytest.raises(ConfigError, match="no kubeconfig file at") as caught,
    ):
        KubernetesExecutor(rig.clock, options)
    assert caught.value.key == "executor.options.clusters.azure:eastus.kubeconfig"
    assert closed == [A.region_key, B.region_key]
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        (
            "could not close the clients of a failed start",
            "warning",
            f"kubernetes: could not close the API client of {A.region_key} (context east): "
            "pool already torn down",
        )
    ]


def test_the_registry_builds_it_by_name(rig: Rig) -> None:
    executor = make_executor("kubernetes", rig.clock, rig.options)
    try:
        assert isinstance(executor, KubernetesExecutor)
    finally:
        executor.close()


def test_close_closes_every_clusters_client_though_one_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failing client does not leave the other's connection pool open; the failure
    is reported once all were tried."""
    executor = rig.restart()
    east, west = (executor._clusters[o.region_key].api for o in (A, B))
    closed: list[str] = []

    def failing_close() -> None:
        closed.append("east")
        raise OSError("pool already torn down")

    west_close = west.close

    def recording_close() -> None:
        closed.append("west")
        west_close()  # type: ignore[no-untyped-call]

    monkeypatch.setattr(east, "close", failing_close)
    monkeypatch.setattr(west, "close", recording_close)
    with pytest.raises(ExecutorError) as caught:
        executor.close()
    assert sorted(closed) == ["east", "west"]
    assert str(caught.value) == (
        f"kubernetes: could not close the API client of {A.region_key} (context east): "
        "pool already torn down"
    )
    assert isinstance(caught.value.__cause__, OSError)


# -- names --------------------------------------------------------------------------


def test_group_names_are_valid_service_names_whatever_the_workload_name() -> None:
    long = "a" * 63
    assert len(group_name(long, A)) <= 63
    assert group_name(long, A) != group_name("a" * 62 + "b", A)
    assert group_name("7b-chat", A).startswith("w7b-chat-")
    assert group_name("chat", A) != group_name("chat", B)


def test_offer_keys_read_back_into_the_same_offer() -> None:
    zoned = make_offer("aws", "us-east-1", "use1-az4", "p5.48xlarge", "spot")
    assert parse_offer_key(zoned.key) == zoned
    assert parse_offer_key(A.key) == A


def test_actions_are_logged_in_plan_wording(rig: Rig) -> None:
    with capture_logs() as logs:
        rig.executor.ensure(WORKLOAD, A, 1)
        rig.executor.ensure(WORKLOAD, A, 2)
        rig.executor.set_weights("chat", {f"chat@{A.key}": 1})
        rig.executor.ensure(WORKLOAD, A, 0)
    assert [entry["event"] for entry in logs] == ["+ place", "~ scale", "~ route", "- release"]
