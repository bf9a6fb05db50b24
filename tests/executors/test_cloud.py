"""The cloud executor as a whole: its options, its place in the registry, its (recording
only) router, and the executor contract across clouds — one executor serving a GCP and
an Azure offer.

Per-cloud behaviour is in test_cloud_aws.py (moto), test_cloud_gcp.py and
test_cloud_azure.py (local fakes of the real APIs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.executors.contract as contract
from arbiter.domain.market import Offer, Provider
from arbiter.errors import ConfigError, ExecutorError
from arbiter.executors import make_executor
from arbiter.executors.cloud import CloudExecutor
from arbiter.ports import FakeClock
from tests.executors.contract import START, WORKLOAD, ExecutorContract, Harness
from tests.executors.test_cloud_azure import FakeCredential, azure_options
from tests.executors.test_cloud_gcp import exhaust_everywhere, gcp_options
from tests.fakes.azure_vms import FakeAzureVms
from tests.fakes.gcp_instances import FakeGcpInstances

GCP_ONLY = {"gcp": {"project": "arbiter-test", "image": "projects/p/global/images/i"}}


def _config_error(options: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        CloudExecutor(FakeClock(START), options)
    return caught.value


# -- options -----------------------------------------------------------------------


def test_the_registry_builds_the_cloud_executor_from_its_options() -> None:
    executor = make_executor("cloud", FakeClock(START), GCP_ONLY)
    assert isinstance(executor, CloudExecutor) and executor.name == "cloud"
    executor.close()


def test_options_must_configure_at_least_one_cloud() -> None:
    error = _config_error({})
    assert error.key == "executor.options"
    assert "at least one of aws, gcp, azure" in str(error)


@pytest.mark.parametrize(
    ("options", "key", "says"),
    [
        ({**GCP_ONLY, "regions": ["x"]}, "executor.options.regions", "unknown option"),
        (
            {"aws": {"image_ids": {"us-east-1": "ami-1"}, "imageids": {}}},
            "executor.options.aws.imageids",
            "unknown option",
        ),
        ({"aws": {"image_ids": {"us-east-1": "img-1"}}}, "executor.options.aws.image_ids", "AMI"),
        (
            {"gcp": {**GCP_ONLY["gcp"], "compute_endpoint": "http://compute.example.com"}},
            "executor.options.gcp.compute_endpoint",
            "https",
        ),
        (
            {"gcp": {**GCP_ONLY["gcp"], "zones": {"us-east4": ["us-west1-a"]}}},
            "executor.options.gcp.zones",
            "not in that region",
        ),
        (
            {"gcp": {**GCP_ONLY["gcp"], "health_check_url": "http://{address}:8000/health"}},
            "executor.options.gcp.health_check_url",
            "unknown placeholder {address}",
        ),
        ({**GCP_ONLY, "router": "nginx"}, "executor.options.router", "'none'"),
        ({**GCP_ONLY, "timeout": 0}, "executor.options.timeout", "greater than 0"),
        ({**GCP_ONLY, "timeout": [30]}, "executor.options.timeout", "duration like '30s'"),
        (
            {**GCP_ONLY, "operation_timeout": {"minutes": 15}},
            "executor.options.operation_timeout",
            "expected a duration like '30s', '5m', '1h30m', got a table",
        ),
        (
            {**GCP_ONLY, "startup_script": "#!/bin/sh", "startup_script_file": "boot.sh"},
            "executor.options",
            "not both",
        ),
    ],
)
def test_a_bad_option_is_a_config_error_naming_executor_options_key(
    options: dict[str, Any], key: str, says: str
) -> None:
    error = _config_error(options)
    assert error.key == key
    assert says in str(error)


def test_azure_health_checks_cannot_use_ip_addresses_the_vm_list_does_not_give() -> None:
    azure = {
        "subscription_id": "00000000-0000-0000-0000-000000000000",
        "resource_group": "rg",
        "subnet_id": "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/"
        "virtualNetworks/v/subnets/gpu",
        "image": "Canonical:ubuntu-24_04-lts:server:latest",
        "ssh_public_key": "ssh-ed25519 AAAA",
        "health_check_url": "http://{private_ip}:8000/health",
    }
    error = _config_error({"azure": azure})
    assert error.key == "executor.options.azure.health_check_url"
    assert "{name}" in str(error)


def test_an_unreadable_start_up_script_file_is_a_config_error(tmp_path: Path) -> None:
    error = _config_error({**GCP_ONLY, "startup_script_file": str(tmp_path / "missing.sh")})
    assert error.key == "executor.options.startup_script_file"


def test_an_offer_on_a_cloud_that_is_not_configured_is_an_executor_error() -> None:
    executor = CloudExecutor(FakeClock(START), GCP_ONLY)
    offer = Offer(
        provider="azure", region="eastus", instance_type="Standard_NC4as_T4_v3", market="spot"
    )
    with pytest.raises(ExecutorError, match=r"executor\.options\.azure is not configured"):
        executor.ensure(WORKLOAD, offer, 1)
    executor.close()


# -- traffic -------------------------------------------------------------------------


def test_weights_are_recorded_but_in_flight_requests_are_unknown() -> None:
    executor = CloudExecutor(FakeClock(START), GCP_ONLY)
    executor.set_weights("chat", {"chat@a": 3, "chat@b": 0})
    assert executor.weights("chat") == {"chat@a": 3}
    assert executor.in_flight("chat", "chat@a") is None
    executor.close()


# -- closing -------------------------------------------------------------------------


class ClosingBackend:
    """A cloud backend that records its ``close()`` and fails it when asked to."""

    def __init__(self, provider: Provider, *, fail: bool) -> None:
        self.provider = provider
        self.fail = fail
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        if self.fail:
            raise OSError(f"{self.provider} pool already torn down")


def executor_with_backends(
    monkeypatch: pytest.MonkeyPatch, *failing: Provider
) -> tuple[CloudExecutor, dict[Provider, ClosingBackend]]:
    """A cloud executor that has used a backend on every cloud and its health-check
    HTTP client."""
    executor = CloudExecutor(FakeClock(START), GCP_ONLY)
    built: dict[Provider, ClosingBackend] = {}

    def build(provider: Provider) -> ClosingBackend:
        built[provider] = ClosingBackend(provider, fail=provider in failing)
        return built[provider]

    monkeypatch.setattr(executor, "_build_backend", build)
    for provider in Provider:
        executor.backend(provider)
    executor._http_client()
    return executor, built


def test_close_closes_every_backend_and_the_http_client_though_one_backend_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor, backends = executor_with_backends(monkeypatch, Provider.AWS)
    http = executor._http_client()
    with pytest.raises(ExecutorError) as caught:
        executor.close()
    assert {p: b.closes for p, b in backends.items()} == {p: 1 for p in Provider}
    assert http.is_closed
    assert str(caught.value) == "cloud: could not close the aws backend: aws pool already torn down"
    assert isinstance(caught.value.__cause__, OSError)


def test_close_reports_every_failure_chained_from_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor, backends = executor_with_backends(monkeypatch, Provider.AWS, Provider.AZURE)
    with pytest.raises(ExecutorError) as caught:
        executor.close()
    assert {p: b.closes for p, b in backends.items()} == {p: 1 for p in Provider}
    assert str(caught.value) == (
        "cloud: could not close the aws backend: aws pool already torn down; "
        "the azure backend: azure pool already torn down"
    )
    assert str(caught.value.__cause__) == "aws pool already torn down"


def test_close_without_failures_raises_nothing_and_a_second_close_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor, backends = executor_with_backends(monkeypatch)
    executor.close()
    executor.close()
    assert {p: b.closes for p, b in backends.items()} == {p: 1 for p in Provider}


# -- the contract across clouds: one executor, offers on GCP and Azure -------------


AZURE_B = Offer(
    provider="azure", region="westeurope", instance_type="Standard_NC4as_T4_v3", market="on-demand"
)


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeGcpInstances, FakeAzureVms]]:
    with FakeGcpInstances() as gcp, FakeAzureVms() as azure:
        yield gcp, azure


class TestCloudExecutorAcrossClouds(ExecutorContract):
    """The contract's A is a GCP offer; B becomes an Azure one (AWS runs the contract in
    test_cloud_aws.py: a second moto server here would only cost time)."""

    @pytest.fixture
    def h(
        self, fakes: tuple[FakeGcpInstances, FakeAzureVms], monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[Harness]:
        gcp, azure = fakes
        gcp.reset()
        azure.reset()
        monkeypatch.setattr(contract, "B", AZURE_B)
        executor = CloudExecutor(
            FakeClock(START),
            {"gcp": gcp_options(gcp), "azure": azure_options(azure)},
            azure_credential=FakeCredential(),
        )

        def wait_ready() -> None:
            gcp.boot()
            azure.tick()

        def exhaust(offer: Offer) -> None:
            if offer.provider == "gcp":
                exhaust_everywhere(gcp, offer)
            else:
                azure.exhaust(offer.instance_type, offer.region)

        yield Harness(executor, wait_ready, exhaust)
        executor.close()
