"""The cloud executor on AWS: the real boto3 client against moto (server mode), on
127.0.0.1 only.

moto launches, describes, tags and terminates instances, but never runs out of
capacity, so the client talks to moto through :class:`Ec2Proxy`: a loopback proxy that
records every EC2 Query API call (to assert what was asked) and answers RunInstances
of an "exhausted" instance type with a real EC2 error document — which also proves
botocore parses it and does not retry it.
"""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest

import tests.executors.contract as contract
from arbiter.domain.market import Offer
from arbiter.errors import CapacityUnavailable, ExecutorError
from arbiter.executors.cloud import CloudExecutor, short_hash
from arbiter.ports import FakeClock
from tests.executors.contract import START, WORKLOAD, ExecutorContract, Harness
from tests.fakes.aws import MotoServer, refused_url, use_fake_credentials, use_no_credentials

AWS_A = Offer(provider="aws", region="us-east-1", instance_type="g6.xlarge", market="spot")
AWS_B = Offer(provider="aws", region="us-east-1", instance_type="g5.xlarge", market="on-demand")
IMAGES = {"us-east-1": "ami-12c6146b"}
"""One region: moto builds each region it is asked about, which takes a while."""
SCRIPT = "#!/bin/bash\necho serve {{workload}} x{{replicas_per_instance}} on ${HOSTNAME}\n"

_SERVER_ERRORS = {"InsufficientInstanceCapacity", "InsufficientHostCapacity"}


class Ec2Proxy:
    """Forwards EC2 calls to moto; records them; fails RunInstances of exhausted types."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.calls: list[dict[str, str]] = []
        self.exhausted: dict[str, str] = {}
        """Instance type → the EC2 error code RunInstances answers for it."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = dict(parse_qsl(body.decode()))
                proxy.calls.append(params)
                code = proxy.exhausted.get(params.get("InstanceType", ""))
                if params.get("Action") == "RunInstances" and code is not None:
                    self._reply(500 if code in _SERVER_ERRORS else 400, _ec2_error(code), {})
                    return
                status, headers, answer = proxy.forward(self.path, body, dict(self.headers))
                self._reply(status, answer, headers)

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", headers.get("content-type", "text/xml"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def forward(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            connection.request("POST", path, body, sent)
            response = connection.getresponse()
            answer = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def run_instances(self) -> list[dict[str, str]]:
        return [call for call in self.calls if call.get("Action") == "RunInstances"]


def _ec2_error(code: str) -> bytes:
    message = (
        "We currently do not have sufficient g6.xlarge capacity in the Availability Zone "
        "you requested (us-east-1d). Our system will be working on provisioning additional "
        "capacity."
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        "</Errors><RequestID>6bf0f2a4-7e3e-4b0c-9b1a-3c0f3c1b2a11</RequestID></Response>"
    ).encode()


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server
        for key in [key for key in _DIRECT if key[0] == server.url]:
            _DIRECT.pop(key).close()


@pytest.fixture(scope="module")
def session() -> boto3.session.Session:
    """One session for the module's executors: a new one costs ~0.4 s of model loading."""
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def ec2(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Ec2Proxy]:
    """A proxy to moto, and fake AWS credentials. Afterwards every instance of the test is
    terminated and untagged: moto keeps terminated instances, and ones still tagged as
    the same group would pile up in every later test's DescribeInstances. (Much faster
    than moto's reset, which rebuilds every region.)"""
    use_fake_credentials(monkeypatch, tmp_path)
    proxy = Ec2Proxy(moto.url)
    yield proxy
    proxy.close()
    for region in IMAGES:
        ids = [i["InstanceId"] for i in _instances(moto, region, terminated=True)]
        if ids:
            client = _direct(moto, region)
            client.terminate_instances(InstanceIds=ids)
            client.delete_tags(Resources=ids, Tags=[{"Key": k} for k in _GROUP_TAGS])


def aws_options(proxy: Ec2Proxy, **overrides: Any) -> dict[str, Any]:
    return {"image_ids": dict(IMAGES), "endpoint_url": proxy.url, **overrides}


@pytest.fixture
def make(ec2: Ec2Proxy, session: boto3.session.Session) -> Iterator[Callable[..., CloudExecutor]]:
    built: list[CloudExecutor] = []

    def make(*, default_credentials: bool = False, **options: Any) -> CloudExecutor:
        aws = aws_options(ec2, **options.pop("aws", {}))
        executor = CloudExecutor(
            FakeClock(START),
            {"aws": aws, "startup_script": SCRIPT, **options},
            aws_session=None if default_credentials else session,
        )
        built.append(executor)
        return executor

    yield make
    for executor in built:
        executor.close()


_DIRECT: dict[tuple[str, str], Any] = {}


def _direct(moto: MotoServer, region: str = "us-east-1") -> Any:
    """An EC2 client straight to moto (not through the proxy), reused."""
    key = (moto.url, region)
    if key not in _DIRECT:
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        _DIRECT[key] = session.client("ec2", region_name=region, endpoint_url=moto.url)
    return _DIRECT[key]


_GROUP_TAGS = ("arbiter-workload", "arbiter-group")


def _instances(
    moto: MotoServer, region: str = "us-east-1", *, terminated: bool = False
) -> list[dict[str, Any]]:
    """The instances arbiter tagged (and did not terminate, unless ``terminated``)."""
    filters = [{"Name": "tag-key", "Values": ["arbiter-group"]}]
    if not terminated:
        states = ["pending", "running", "shutting-down", "stopping", "stopped"]
        filters.append({"Name": "instance-state-name", "Values": states})
    reservations = _direct(moto, region).describe_instances(Filters=filters)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def _tags(call: dict[str, str], spec: int = 1) -> dict[str, str]:
    prefix = f"TagSpecification.{spec}.Tag."
    keys = {k.removeprefix(prefix).split(".")[0] for k in call if k.startswith(prefix)}
    return {call[f"{prefix}{n}.Key"]: call[f"{prefix}{n}.Value"] for n in keys}


# -- the contract --------------------------------------------------------------------


class TestAwsCloudExecutor(ExecutorContract):
    @pytest.fixture
    def h(
        self, make: Callable[..., CloudExecutor], ec2: Ec2Proxy, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[Harness]:
        # The contract's offers are on GCP and AWS; this class runs it on two EC2 offers.
        monkeypatch.setattr(contract, "A", AWS_A)
        monkeypatch.setattr(contract, "B", AWS_B)

        def exhaust(offer: Offer) -> None:
            ec2.exhausted[offer.instance_type] = "InsufficientInstanceCapacity"

        yield Harness(make(), lambda: None, exhaust)  # moto: running at once


# -- what is launched ----------------------------------------------------------------


def test_a_spot_offer_launches_one_time_spot_instances_that_terminate_on_interruption(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    make().ensure(WORKLOAD, AWS_A, 2)
    (call,) = ec2.run_instances()
    assert call["InstanceMarketOptions.MarketType"] == "spot"
    assert call["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time"
    assert call["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    assert "InstanceMarketOptions.SpotOptions.MaxPrice" not in call
    assert (call["InstanceType"], call["MinCount"], call["MaxCount"]) == ("g6.xlarge", "2", "2")
    assert call["ImageId"] == IMAGES["us-east-1"]


def test_an_on_demand_offer_launches_without_market_options(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    make().ensure(WORKLOAD, AWS_B, 1)
    (call,) = ec2.run_instances()
    assert not [key for key in call if key.startswith("InstanceMarketOptions")]


def test_instances_carry_the_group_tags_and_the_rendered_start_up_script(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy, moto: MotoServer
) -> None:
    make().ensure(WORKLOAD, AWS_A, 1)
    (call,) = ec2.run_instances()
    tags = _tags(call)
    assert tags["arbiter-workload"] == "chat"
    assert tags["arbiter-offer"] == short_hash(AWS_A.key)
    assert tags["arbiter-group"] == short_hash("chat@" + AWS_A.key)
    assert tags["arbiter-offer-key"] == AWS_A.key
    assert tags["arbiter-replicas"] == "1"
    assert _tags(call, 2) == tags  # the volumes too
    script = base64.b64decode(call["UserData"]).decode()
    assert script == "#!/bin/bash\necho serve chat x1 on ${HOSTNAME}\n"
    (instance,) = _instances(moto)
    assert {t["Key"]: t["Value"] for t in instance["Tags"]}["arbiter-group"] == tags[
        "arbiter-group"
    ]


def test_the_client_token_is_new_for_a_launch_after_a_release(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    executor = make()
    executor.ensure(WORKLOAD, AWS_A, 2)
    executor.ensure(WORKLOAD, AWS_A, 0)
    executor.ensure(WORKLOAD, AWS_A, 2)
    first, second = ec2.run_instances()
    assert first["ClientToken"] and second["ClientToken"]
    assert first["ClientToken"] != second["ClientToken"]


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        (
            AWS_A.model_copy(update={"zone": "use1-az4"}),
            {"Placement.AvailabilityZoneId": "use1-az4"},
        ),
        (
            AWS_A.model_copy(update={"zone": "us-east-1d"}),
            {"Placement.AvailabilityZone": "us-east-1d"},
        ),
    ],
)
def test_a_zone_is_placed_by_id_or_by_name_as_the_offer_names_it(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy, offer: Offer, expected: dict[str, str]
) -> None:
    make().ensure(WORKLOAD, offer, 1)
    (call,) = ec2.run_instances()
    assert {k: v for k, v in call.items() if k.startswith("Placement.")} == expected


def test_a_configured_subnet_places_the_instances_and_no_zone_is_given(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy, moto: MotoServer
) -> None:
    subnet = _direct(moto).describe_subnets()["Subnets"][0]["SubnetId"]
    offer = AWS_A.model_copy(update={"zone": "use1-az4"})
    make(aws={"subnet_ids": {"use1-az4": subnet}}).ensure(WORKLOAD, offer, 1)
    (call,) = ec2.run_instances()
    assert call["SubnetId"] == subnet
    assert not [key for key in call if key.startswith("Placement.")]


# -- replicas per instance -------------------------------------------------------------


def test_an_instance_with_more_gpus_hosts_several_replicas(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy, moto: MotoServer
) -> None:
    two_gpus = WORKLOAD.model_copy(update={"gpus_per_replica": 2})
    offer = AWS_A.model_copy(update={"instance_type": "g5.12xlarge"})  # 4 × A10G
    executor = make()
    group = executor.ensure(two_gpus, offer, 3)
    (call,) = ec2.run_instances()
    assert call["MinCount"] == "2"  # ceil(3 / floor(4 / 2))
    assert _tags(call)["arbiter-replicas"] == "2"
    assert (group.desired, executor.group("chat", offer).ready) == (3, 3)  # type: ignore[union-attr]
    smaller = executor.ensure(two_gpus, offer, 2)
    assert (smaller.desired, smaller.ready) == (2, 2)
    assert len(_instances(moto)) == 1


def test_an_instance_type_with_too_few_gpus_for_one_replica_is_an_executor_error(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    two_gpus = WORKLOAD.model_copy(update={"gpus_per_replica": 2})
    with pytest.raises(ExecutorError, match=r"g6\.xlarge has 1 GPU") as caught:
        make().ensure(two_gpus, AWS_A, 1)
    assert not isinstance(caught.value, CapacityUnavailable)
    assert ec2.run_instances() == []


# -- restarts, orphans, dead instances ---------------------------------------------------


def test_after_a_restart_ensure_finds_the_instances_by_tag_and_launches_nothing(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    make().ensure(WORKLOAD, AWS_A, 2)
    restarted = make()
    again = restarted.ensure(WORKLOAD, AWS_A, 2)
    assert len(ec2.run_instances()) == 1
    assert (again.desired, again.ready) == (2, 2)


def test_after_a_restart_groups_reports_what_runs_from_the_tags_alone(
    make: Callable[..., CloudExecutor],
) -> None:
    make().ensure(WORKLOAD, AWS_A, 2)
    (found,) = make().groups()
    assert (found.workload, found.offer, found.desired, found.ready) == ("chat", AWS_A, 2, 2)


def test_a_stopped_instance_is_replaced_and_terminated(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy, moto: MotoServer
) -> None:
    executor = make()
    executor.ensure(WORKLOAD, AWS_A, 2)
    victim = _instances(moto)[0]["InstanceId"]
    _direct(moto).stop_instances(InstanceIds=[victim])
    assert executor.group("chat", AWS_A).ready == 1  # type: ignore[union-attr]
    executor.ensure(WORKLOAD, AWS_A, 2)
    states = {i["InstanceId"]: i["State"]["Name"] for i in _instances(moto)}
    assert states.pop(victim, "terminated") in ("shutting-down", "terminated")
    assert sorted(states.values()) == ["running", "running"]
    assert [call["MinCount"] for call in ec2.run_instances()] == ["2", "1"]


# -- readiness ---------------------------------------------------------------------------


def test_with_a_health_check_only_instances_that_answer_it_are_ready(
    make: Callable[..., CloudExecutor],
) -> None:
    healthy: set[str] = set()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            instance = self.path.rsplit("/", 1)[-1]
            self.send_response(200 if instance in healthy else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        port = server.server_address[1]
        executor = make(aws={"health_check_url": f"http://127.0.0.1:{port}/healthz/{{id}}"})
        executor.ensure(WORKLOAD, AWS_A, 2)
        assert executor.group("chat", AWS_A).ready == 0  # type: ignore[union-attr]
        healthy.update(vm.id for vm in executor.backend("aws").find(region="us-east-1"))
        assert executor.group("chat", AWS_A).ready == 2  # type: ignore[union-attr]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "VcpuLimitExceeded",
    ],
)
def test_each_capacity_error_is_capacity_unavailable_with_its_code_and_not_retried(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy, code: str
) -> None:
    ec2.exhausted["g6.xlarge"] = code
    with pytest.raises(CapacityUnavailable) as caught:
        make().ensure(WORKLOAD, AWS_A, 2)
    assert (caught.value.code, caught.value.offer_key, caught.value.executor) == (
        code,
        AWS_A.key,
        "cloud",
    )
    assert len(ec2.run_instances()) == 1


def test_any_other_ec2_error_is_an_executor_error_naming_the_code(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    ec2.exhausted["g6.xlarge"] = "InvalidAMIID.NotFound"
    with pytest.raises(
        ExecutorError, match=r"RunInstances \(us-east-1\): InvalidAMIID.NotFound"
    ) as caught:
        make().ensure(WORKLOAD, AWS_A, 1)
    assert not isinstance(caught.value, CapacityUnavailable)


def test_an_unreachable_endpoint_is_an_executor_error(make: Callable[..., CloudExecutor]) -> None:
    executor = make(aws={"endpoint_url": refused_url()})
    with pytest.raises(ExecutorError, match="DescribeInstances"):
        executor.ensure(WORKLOAD, AWS_A, 1)


def test_missing_credentials_are_an_executor_error_saying_how_to_provide_them(
    make: Callable[..., CloudExecutor], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_no_credentials(monkeypatch, tmp_path)
    with pytest.raises(ExecutorError, match="no usable AWS credentials") as caught:
        make(default_credentials=True).ensure(WORKLOAD, AWS_A, 1)
    assert "AWS_ACCESS_KEY_ID" in str(caught.value)


def test_a_region_without_an_image_is_an_executor_error_naming_the_option(
    make: Callable[..., CloudExecutor], ec2: Ec2Proxy
) -> None:
    offer = AWS_A.model_copy(update={"region": "eu-west-1"})
    with pytest.raises(ExecutorError, match=r"executor.options.aws.image_ids.eu-west-1"):
        make().ensure(WORKLOAD, offer, 1)


# -- closing ------------------------------------------------------------------------------


def test_closing_the_backend_closes_every_regions_client_though_one_fails(
    make: Callable[..., CloudExecutor], monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = make()
    backend = executor.backend("aws")
    east, west = backend.client("us-east-1"), backend.client("us-west-2")  # type: ignore[attr-defined]
    closed: list[str] = []

    def failing_close() -> None:
        closed.append("us-east-1")
        raise OSError("pool already torn down")

    west_close = west.close

    def recording_close() -> None:
        closed.append("us-west-2")
        west_close()

    monkeypatch.setattr(east, "close", failing_close)
    monkeypatch.setattr(west, "close", recording_close)
    with pytest.raises(ExecutorError) as caught:
        executor.close()
    assert closed == ["us-east-1", "us-west-2"]
    assert str(caught.value) == (
        "cloud: could not close the aws backend: could not close the ec2 client of us-east-1: "
        "pool already torn down"
    )
