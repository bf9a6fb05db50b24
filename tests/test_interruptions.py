"""Interruption notice sources, driven through their real clients on 127.0.0.1 only:
SQS and EC2 on moto's server, the instance-metadata services on a local fake, the
Kubernetes API on a small fake; then end to end — a notice evacuates a spot placement,
directly through the Reconciler and through the daemon's jobs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from arbiter.catalog import load_catalog
from arbiter.config import InterruptionSourceConfig, Mode, Settings, load_config
from arbiter.domain.fleet import InterruptionNotice
from arbiter.domain.market import (
    CapacityKind,
    CapacitySignal,
    InstanceType,
    Market,
    Offer,
    PriceQuote,
    Provider,
)
from arbiter.domain.migrations import MigrationState
from arbiter.domain.workloads import Workload
from arbiter.errors import AuthFailed, BadPayload, ConfigError, Throttled, Unavailable
from arbiter.interruptions import INTERRUPTION_SOURCES, Sightings, build_interruption_source
from arbiter.interruptions.aws_sqs import AwsSqsSource, queue_region
from arbiter.interruptions.kubernetes_nodes import KubernetesNodesSource
from arbiter.migrator import Migrator
from arbiter.ports import Clock, FakeClock, FakeExecutor, SystemClock
from arbiter.reconcile import Reconciler
from arbiter.store.repositories import Store
from tests.fakes.aws import MotoServer, refused_url, use_fake_credentials, use_no_credentials
from tests.fakes.metadata import (
    AZURE_PREEMPT_EVENTS,
    EVENTBRIDGE_REBALANCE,
    EVENTBRIDGE_SPOT_WARNING,
    IMDS_INSTANCE_ACTION_STOP,
    IMDS_INSTANCE_ACTION_TERMINATE,
    IMDS_REBALANCE,
    FakeMetadata,
    FakeNodes,
    node,
    wait_until,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    with FakeMetadata() as server:
        yield server


@pytest.fixture
def built() -> Iterator[list[Any]]:
    """Sources built by a test, closed afterwards."""
    sources: list[Any] = []
    yield sources
    for source in sources:
        source.close()


@pytest.fixture
def make(built: list[Any]) -> Callable[..., Any]:
    def make(kind: str, **options: Any) -> Any:
        source = build_interruption_source(kind, f"test-{kind}", options)
        built.append(source)
        return source

    return make


# ----------------------------------------------------------------- registry and config


def test_the_registry_names_the_five_kinds() -> None:
    assert sorted(INTERRUPTION_SOURCES) == [
        "aws-imds",
        "aws-sqs",
        "azure-scheduled-events",
        "gcp-metadata",
        "kubernetes-nodes",
    ]


def test_an_unknown_kind_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'aws-sqs'\? known: aws-imds, aws-sqs"):
        build_interruption_source("aws-sq", "spot", {})


def test_settings_take_an_interruptions_section_polled_every_5s_by_default() -> None:
    settings = Settings.model_validate({"interruptions": {"spot": {"kind": "aws-imds"}}})
    conf = settings.interruptions["spot"]
    assert conf == InterruptionSourceConfig(kind="aws-imds")
    assert (conf.enabled, conf.interval, conf.options) == (True, 5.0, {})


def test_the_config_file_names_the_key_of_an_unknown_interruption_kind(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[interruptions.spot]\nkind = "gcp-metdata"\ninterval = "2s"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == "interruptions.spot.kind"
    assert "did you mean 'gcp-metadata'" in str(caught.value)


def test_an_unknown_option_names_interruptions_name_options_key() -> None:
    with pytest.raises(ConfigError) as caught:
        build_interruption_source("aws-imds", "imds", {"endpiont": "http://127.0.0.1:1"})
    assert caught.value.source == "interruptions.imds.options"
    assert caught.value.key == "endpiont"
    assert "known: endpoint, timeout" in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "options", "key"),
    [
        (
            "aws-sqs",
            {"queue_url": "http://sqs.example.com/1/q", "region": "us-east-1"},
            "queue_url",
        ),
        ("aws-sqs", {"queue_url": "https://queue.example.com/1/q"}, None),
        (
            "aws-sqs",
            {"queue_url": "https://sqs.us-east-1.amazonaws.com/1/q", "wait_seconds": 21},
            "wait_seconds",
        ),
        ("aws-imds", {"endpoint": "http://169.254.169.254/latest"}, "endpoint"),
        ("gcp-metadata", {"timeout": 0}, "timeout"),
        ("kubernetes-nodes", {"in_cluster": True, "context": "prod"}, None),
    ],
)
def test_invalid_options_are_refused_naming_the_key(
    kind: str, options: dict[str, Any], key: str | None
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_interruption_source(kind, "spot", options)
    assert caught.value.source == "interruptions.spot.options"
    assert caught.value.key == key


SQS_CONFIG = """\
[policies]
paths = []
workloads = []

[interruptions.sqs]
kind = "aws-sqs"

[interruptions.sqs.options]
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/spot"
wait_seconds = 21
"""


def error_starting(config: str, tmp_path: Path, env: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError a daemon started on this config file stops with (the daemon
    builds the interruption sources, after the config was loaded)."""
    from arbiter.daemon import Daemon
    from arbiter.store.db import make_engine

    path = tmp_path / "config.toml"
    path.write_text(config)
    settings = load_config(path, env={"ARBITER_HTTP__ENABLED": "false", **(env or {})}).settings
    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    engine = make_engine(url)
    daemon = Daemon(settings, engine, CATALOG, database_url=url)
    try:
        with pytest.raises(ConfigError) as caught:
            daemon.run(on_ready=daemon.stopping.set)
    finally:
        engine.dispose()
    return caught.value


def test_a_bad_option_names_the_config_file_and_the_line(tmp_path: Path) -> None:
    error = error_starting(SQS_CONFIG, tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:10",
        "interruptions.sqs.options.wait_seconds",
    )
    assert str(error).startswith(
        f"{tmp_path / 'config.toml'}:10: interruptions.sqs.options.wait_seconds: "
    )


def test_an_option_set_by_a_variable_names_the_variable(tmp_path: Path) -> None:
    config = SQS_CONFIG.replace("wait_seconds = 21\n", "")
    error = error_starting(
        config, tmp_path, env={"ARBITER_INTERRUPTIONS__SQS__OPTIONS__WAIT_SECONDS": "21"}
    )
    assert (error.source, error.key) == (
        "environment ARBITER_INTERRUPTIONS__SQS__OPTIONS__WAIT_SECONDS",
        "interruptions.sqs.options.wait_seconds",
    )


def test_a_kubeconfig_that_is_not_there_names_the_line_of_the_option(tmp_path: Path) -> None:
    config = (
        "[policies]\npaths = []\nworkloads = []\n\n"
        '[interruptions.nodes]\nkind = "kubernetes-nodes"\n'
        f'options = {{ kubeconfig = "{tmp_path / "nope"}" }}\n'
    )
    error = error_starting(config, tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:7",
        "interruptions.nodes.options.kubeconfig",
    )


def test_the_queue_region_is_read_from_the_queue_url() -> None:
    assert queue_region("https://sqs.eu-west-1.amazonaws.com/123456789012/q") == "eu-west-1"
    assert queue_region("https://us-east-2.queue.amazonaws.com/123456789012/q") == "us-east-2"
    assert queue_region("http://127.0.0.1:5000/123456789012/q") is None


def test_sightings_keep_the_first_time_until_the_signal_is_gone() -> None:
    seen = Sightings()
    assert seen.first_seen("a", NOW) == NOW
    assert seen.first_seen("a", NOW + timedelta(seconds=5)) == NOW
    seen.keep_only([])
    assert seen.first_seen("a", NOW + timedelta(seconds=9)) == NOW + timedelta(seconds=9)


# --------------------------------------------------------------------------- aws-sqs


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def ami(moto: MotoServer) -> str:
    """An image to launch from (moto's image list is slow to read: read it once)."""
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    image = str(ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"])
    ec2.close()
    return image


@pytest.fixture
def aws(moto: MotoServer, ami: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AwsWorld:
    use_fake_credentials(monkeypatch, tmp_path)
    return AwsWorld(moto.url, ami)


class AwsWorld:
    """A fresh queue (visibility timeout 0, so kept messages come back at once) and a
    way to launch spot instances, on moto."""

    def __init__(self, url: str, ami: str) -> None:
        self.url = url
        kwargs = {"region_name": "us-east-1", "endpoint_url": url}
        self.ec2 = boto3.client("ec2", **kwargs)
        self.sqs = boto3.client("sqs", **kwargs)
        self.queue_url = self.sqs.create_queue(
            QueueName=f"arbiter-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "0"}
        )["QueueUrl"]
        self._ami = ami

    def launch(self, instance_type: str = "g5.xlarge", zone: str = "us-east-1b") -> str:
        reply = self.ec2.run_instances(
            ImageId=self._ami,
            InstanceType=instance_type,
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": zone},
            InstanceMarketOptions={"MarketType": "spot"},
        )
        return str(reply["Instances"][0]["InstanceId"])

    def send(self, body: Any) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)

    def warning(self, instance_id: str, action: str = "terminate", **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(json.dumps(EVENTBRIDGE_SPOT_WARNING))
        event["time"] = "2026-11-22T12:00:00Z"
        event["account"] = "123456789012"
        event["detail"] = {"instance-id": instance_id, "instance-action": action}
        event.update(fields)
        return event

    def left(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def options(self, **extra: Any) -> dict[str, Any]:
        return {
            "queue_url": self.queue_url,
            "region": "us-east-1",
            "sqs_endpoint_url": self.url,
            "ec2_endpoint_url": self.url,
            "wait_seconds": 0,
            **extra,
        }


def test_a_spot_interruption_warning_becomes_a_notice_and_its_message_is_deleted(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    instance = aws.launch("g5.xlarge", "us-east-1b")
    aws.send(aws.warning(instance))
    source: AwsSqsSource = make("aws-sqs", **aws.options())

    notices = source.poll(NOW)

    assert notices == [
        InterruptionNotice(
            provider=Provider.AWS,
            region="us-east-1",
            instance_type="g5.xlarge",
            zone="use1-az1",  # the zone id of us-east-1b, as spot prices name zones
            market=Market.SPOT,
            deadline=datetime(2026, 11, 22, 12, 2, tzinfo=UTC),
            source="test-aws-sqs",
            detail=instance,
        )
    ]
    assert aws.left() == 0
    assert source.poll(NOW) == []


def test_the_notice_matches_the_spot_offer_of_the_instance(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    instance = aws.launch("g5.xlarge", "us-east-1b")
    aws.send(aws.warning(instance))
    (notice,) = make("aws-sqs", **aws.options()).poll(NOW)
    offer = Offer(
        provider=Provider.AWS,
        region="us-east-1",
        zone="use1-az1",
        instance_type="g5.xlarge",
        market=Market.SPOT,
    )
    other_zone = offer.model_copy(update={"zone": "use1-az2"})
    assert notice.matches(offer) and not notice.matches(other_zone)


def test_a_hibernating_instance_has_no_grace_period(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    aws.send(aws.warning(aws.launch(), action="hibernate"))
    (notice,) = make("aws-sqs", **aws.options()).poll(NOW)
    assert notice.deadline == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_malformed_messages_are_logged_with_their_field_and_deleted_and_good_ones_kept(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    good = aws.launch()
    aws.send("this is not JSON")
    aws.send(aws.warning("not-an-instance"))
    aws.send(aws.warning(aws.launch(), action="explode"))
    aws.send({**aws.warning(aws.launch()), "time": "yesterday"})
    aws.send(aws.warning(good))
    source = make("aws-sqs", **aws.options())

    with capture_logs() as logs:
        notices = source.poll(NOW)

    assert [n.detail for n in notices] == [good]
    fields = sorted(
        e["field"] for e in logs if e["event"] == "malformed interruption message deleted"
    )
    assert fields == ["(body)", "detail.instance-action", "detail.instance-id", "time"]
    assert aws.left() == 0


def test_other_events_are_deleted_without_a_notice(aws: AwsWorld, make: Callable[..., Any]) -> None:
    aws.send({**aws.warning(aws.launch()), "detail-type": "EC2 Instance State-change Notification"})
    with capture_logs() as logs:
        assert make("aws-sqs", **aws.options()).poll(NOW) == []
    assert any(e["event"] == "not an interruption event; message deleted" for e in logs)
    assert aws.left() == 0


def test_rebalance_recommendations_are_ignored_unless_asked_for(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    instance = aws.launch()
    rebalance = {**EVENTBRIDGE_REBALANCE, "detail": {"instance-id": instance}}
    aws.send(rebalance)
    assert make("aws-sqs", **aws.options()).poll(NOW) == []
    assert aws.left() == 0

    aws.send(rebalance)
    (notice,) = make("aws-sqs", **aws.options(rebalance_recommendations=True)).poll(NOW)
    assert notice.deadline == datetime(2020, 10, 26, 14, 16, 14, tzinfo=UTC)


def test_an_event_delivered_through_sns_is_read(aws: AwsWorld, make: Callable[..., Any]) -> None:
    instance = aws.launch()
    aws.send({"Type": "Notification", "Message": json.dumps(aws.warning(instance))})
    assert [n.detail for n in make("aws-sqs", **aws.options()).poll(NOW)] == [instance]


def test_a_warning_for_an_instance_ec2_does_not_know_is_dropped(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    aws.send(aws.warning("i-0123456789abcdef0"))
    with capture_logs() as logs:
        assert make("aws-sqs", **aws.options()).poll(NOW) == []
    assert any(e["event"] == "interrupted instance not found; message deleted" for e in logs)
    assert aws.left() == 0


def test_more_than_one_batch_is_drained_in_one_poll(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    instances = [aws.launch() for _ in range(3)]
    for i in range(23):
        aws.send(aws.warning(instances[i % 3]))
    notices = make("aws-sqs", **aws.options()).poll(NOW)
    assert len(notices) == 23 and {n.detail for n in notices} == set(instances)
    assert aws.left() == 0


def test_messages_whose_instance_lookup_failed_stay_in_the_queue(
    aws: AwsWorld, make: Callable[..., Any]
) -> None:
    instance = aws.launch()
    aws.send(aws.warning(instance))
    broken = make("aws-sqs", **aws.options(ec2_endpoint_url=refused_url(), timeout=1))
    with pytest.raises(Unavailable, match="ec2:DescribeInstances"):
        broken.poll(NOW)
    assert aws.left() == 1
    assert [n.detail for n in make("aws-sqs", **aws.options()).poll(NOW)] == [instance]


def test_a_missing_queue_is_a_bad_payload(aws: AwsWorld, make: Callable[..., Any]) -> None:
    source = make("aws-sqs", **aws.options(queue_url=f"{aws.url}/123456789012/no-such-queue"))
    with pytest.raises(BadPayload, match="sqs:ReceiveMessage"):
        source.poll(NOW)


def test_an_unreachable_queue_is_unavailable(aws: AwsWorld, make: Callable[..., Any]) -> None:
    url = refused_url()
    source = make("aws-sqs", **aws.options(queue_url=f"{url}/1/q", sqs_endpoint_url=url, timeout=1))
    with pytest.raises(Unavailable):
        source.poll(NOW)


def test_no_credentials_is_auth_failed(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make: Callable[..., Any]
) -> None:
    use_no_credentials(monkeypatch, tmp_path)
    source = make(
        "aws-sqs",
        queue_url=f"{moto.url}/123456789012/q",
        region="us-east-1",
        sqs_endpoint_url=moto.url,
    )
    with pytest.raises(AuthFailed, match="no usable AWS credentials"):
        source.poll(NOW)


# -------------------------------------------------------------------------- aws-imds


def test_imds_reports_no_notice_while_instance_action_is_404(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    assert make("aws-imds", endpoint=metadata.url).poll(NOW) == []


def test_imds_turns_instance_action_into_a_notice_due_at_its_time(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.aws_instance_action = IMDS_INSTANCE_ACTION_TERMINATE
    assert make("aws-imds", endpoint=metadata.url).poll(NOW) == [
        InterruptionNotice(
            provider=Provider.AWS,
            region="us-east-1",
            instance_type="g5.xlarge",
            zone="use1-az1",
            market=Market.SPOT,
            deadline=datetime(2017, 9, 18, 8, 22, tzinfo=UTC),
            source="test-aws-imds",
            detail="i-0b662ef9931388ba0",
        )
    ]


def test_imds_reuses_its_token_and_renews_it_when_refused(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    source = make("aws-imds", endpoint=metadata.url)
    metadata.aws_instance_action = IMDS_INSTANCE_ACTION_STOP
    for _ in range(3):
        assert len(source.poll(NOW)) == 1
    assert metadata.tokens_issued == 1
    metadata.expire_aws_tokens()
    assert len(source.poll(NOW)) == 1
    assert metadata.tokens_issued == 2
    assert len(source.poll(NOW + timedelta(hours=6))) == 1  # past the TTL: a new token
    assert metadata.tokens_issued == 3


def test_imds_rebalance_recommendations_are_notices_only_when_asked_for(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.aws_rebalance = IMDS_REBALANCE
    assert make("aws-imds", endpoint=metadata.url).poll(NOW) == []
    (notice,) = make("aws-imds", endpoint=metadata.url, rebalance_recommendations=True).poll(NOW)
    assert notice.deadline == datetime(2020, 10, 27, 8, 24, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("<html>oops</html>", "/latest/meta-data/spot/instance-action"),
        ('{"action": "explode", "time": "2017-09-18T08:22:00Z"}', "spot/instance-action.action"),
        ('{"action": "terminate", "time": "soon"}', "spot/instance-action.time"),
        ('{"action": "terminate", "time": "2017-09-18T08:22:00"}', "spot/instance-action.time"),
    ],
)
def test_imds_refuses_a_malformed_instance_action(
    metadata: FakeMetadata, make: Callable[..., Any], body: str, field: str
) -> None:
    metadata.aws_instance_action = body
    with pytest.raises(BadPayload) as caught:
        make("aws-imds", endpoint=metadata.url).poll(NOW)
    assert caught.value.field is not None and caught.value.field.endswith(field)


def test_imds_5xx_is_unavailable(metadata: FakeMetadata, make: Callable[..., Any]) -> None:
    metadata.fail("/latest/meta-data/spot", 503)
    with pytest.raises(Unavailable, match="HTTP 503"):
        make("aws-imds", endpoint=metadata.url).poll(NOW)


def test_imds_timeout_is_unavailable(metadata: FakeMetadata, make: Callable[..., Any]) -> None:
    metadata.delay = 2
    started = time.monotonic()
    with pytest.raises(Unavailable, match="timed out"):
        make("aws-imds", endpoint=metadata.url, timeout=0.2).poll(NOW)
    assert time.monotonic() - started < 1.5


def test_imds_unreachable_is_unavailable(make: Callable[..., Any]) -> None:
    with pytest.raises(Unavailable, match="connection failed"):
        make("aws-imds", endpoint=refused_url()).poll(NOW)


# ---------------------------------------------------------------------- gcp-metadata


def test_gce_reports_nothing_while_preempted_is_false(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    assert make("gcp-metadata", endpoint=metadata.url).poll(NOW) == []


def test_gce_preemption_is_one_notice_due_30s_after_it_was_first_seen(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    source = make("gcp-metadata", endpoint=metadata.url)
    metadata.set_gcp_preempted("TRUE")
    first = source.poll(NOW)
    assert first == [
        InterruptionNotice(
            provider=Provider.GCP,
            region="us-central1",
            instance_type="g2-standard-4",
            zone="us-central1-a",
            market=Market.SPOT,
            deadline=NOW + timedelta(seconds=30),
            source="test-gcp-metadata",
            detail="gpu-spot-1",
        )
    ]
    assert source.poll(NOW + timedelta(seconds=5)) == first  # the same notice, not a new one
    assert all(r.headers.get("metadata-flavor") == "Google" for r in metadata.requests)


def test_gce_waiting_for_a_change_sees_the_preemption_at_once(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    source = make("gcp-metadata", endpoint=metadata.url, wait_seconds=5)
    assert source.poll(NOW) == []  # the first answer gives the ETag to wait on
    threading.Timer(0.2, metadata.set_gcp_preempted, args=["TRUE"]).start()
    started = time.monotonic()
    notices = source.poll(NOW)
    assert len(notices) == 1 and time.monotonic() - started < 3
    waited = [r for r in metadata.requests if r.path.endswith("/preempted")][-1]
    assert waited.query["wait_for_change"] == ["true"] and waited.query["timeout_sec"] == ["5"]


def test_gce_refuses_a_preempted_flag_that_is_not_true_or_false(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.set_gcp_preempted("MAYBE")
    with pytest.raises(BadPayload, match="expected TRUE or FALSE"):
        make("gcp-metadata", endpoint=metadata.url).poll(NOW)


def test_gce_5xx_and_timeouts_are_unavailable(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    source = make("gcp-metadata", endpoint=metadata.url, timeout=0.3)
    metadata.fail("/computeMetadata/v1/instance/preempted", 503)
    with pytest.raises(Unavailable, match="HTTP 503"):
        source.poll(NOW)
    metadata.delay = 2
    with pytest.raises(Unavailable, match="timed out"):
        source.poll(NOW)


# ------------------------------------------------------------ azure-scheduled-events


def test_azure_reports_nothing_without_events(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    assert make("azure-scheduled-events", endpoint=metadata.url).poll(NOW) == []


def test_azure_preempt_event_is_a_notice_due_at_not_before(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = AZURE_PREEMPT_EVENTS
    assert make("azure-scheduled-events", endpoint=metadata.url).poll(NOW) == [
        InterruptionNotice(
            provider=Provider.AZURE,
            region="eastus",
            instance_type="Standard_NC4as_T4_v3",
            zone=None,
            market=Market.SPOT,
            deadline=datetime(2022, 8, 9, 17, 7, 32, tzinfo=UTC),
            source="test-azure-scheduled-events",
            detail="vm-spot (event C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E)",
        )
    ]
    assert all(r.headers.get("metadata") == "true" for r in metadata.requests)


def _event(**fields: Any) -> dict[str, Any]:
    event = dict(AZURE_PREEMPT_EVENTS["Events"][0])
    event.update(fields)
    return event


def test_azure_ignores_other_event_types_and_other_vms_unless_asked(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = {
        "DocumentIncarnation": 3,
        "Events": [
            _event(EventId="A", EventType="Freeze"),
            _event(EventId="B", Resources=["vm-other"]),
        ],
    }
    assert make("azure-scheduled-events", endpoint=metadata.url).poll(NOW) == []
    (notice,) = make("azure-scheduled-events", endpoint=metadata.url, other_vms=True).poll(NOW)
    assert notice.detail == "vm-other (event B)"


def test_azure_skips_a_malformed_event_and_keeps_the_good_one(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = {
        "DocumentIncarnation": 2,
        "Events": [_event(EventId="A", NotBefore="next tuesday"), _event(EventId="B")],
    }
    with capture_logs() as logs:
        notices = make("azure-scheduled-events", endpoint=metadata.url).poll(NOW)
    assert [n.detail for n in notices] == ["vm-spot (event B)"]
    assert [e["field"] for e in logs if e["event"] == "malformed scheduled event skipped"] == [
        "Events[0].NotBefore"
    ]


def test_azure_started_event_without_not_before_counts_from_first_sight(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = {"DocumentIncarnation": 2, "Events": [_event(NotBefore="")]}
    source = make("azure-scheduled-events", endpoint=metadata.url)
    assert source.poll(NOW)[0].deadline == NOW
    assert source.poll(NOW + timedelta(seconds=5))[0].deadline == NOW


def test_azure_refuses_a_body_that_is_not_a_scheduled_events_document(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = {"DocumentIncarnation": 1}
    with pytest.raises(BadPayload, match="Events: missing"):
        make("azure-scheduled-events", endpoint=metadata.url).poll(NOW)
    metadata.azure_events = "<html>proxy error</html>"
    with pytest.raises(BadPayload, match="not JSON"):
        make("azure-scheduled-events", endpoint=metadata.url).poll(NOW)


def test_azure_never_acknowledges_by_default(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = AZURE_PREEMPT_EVENTS
    source = make("azure-scheduled-events", endpoint=metadata.url)
    source.poll(NOW)
    source.poll(NOW)
    assert metadata.acknowledged == []


def test_azure_acknowledges_once_on_the_poll_after_the_notice_was_handed_over(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    metadata.azure_events = AZURE_PREEMPT_EVENTS
    source = make("azure-scheduled-events", endpoint=metadata.url, acknowledge=True)
    assert len(source.poll(NOW)) == 1
    assert metadata.acknowledged == []
    assert len(source.poll(NOW)) == 1
    event_id = AZURE_PREEMPT_EVENTS["Events"][0]["EventId"]
    assert metadata.acknowledged == [{"StartRequests": [{"EventId": event_id}]}]
    source.poll(NOW)
    assert len(metadata.acknowledged) == 1


def test_azure_5xx_and_timeouts_are_unavailable(
    metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    source = make("azure-scheduled-events", endpoint=metadata.url, timeout=0.3)
    metadata.fail("/metadata/scheduledevents", 500)
    with pytest.raises(Unavailable, match="HTTP 500"):
        source.poll(NOW)
    metadata.delay = 2
    with pytest.raises(Unavailable, match="timed out"):
        source.poll(NOW)


# ------------------------------------------------------------------ kubernetes-nodes


@pytest.fixture
def cluster() -> Iterator[FakeNodes]:
    with FakeNodes() as server:
        yield server


@pytest.fixture
def nodes_source(
    cluster: FakeNodes, tmp_path: Path, make: Callable[..., Any]
) -> Callable[..., Any]:
    config = cluster.write_kubeconfig(tmp_path / "kubeconfig")

    def build(**options: Any) -> KubernetesNodesSource:
        source: KubernetesNodesSource = make(
            "kubernetes-nodes", kubeconfig=str(config), timeout=2, **options
        )
        return source

    return build


AWS_SPOT_NODE_LABELS = {
    "topology.kubernetes.io/region": "us-east-1",
    "topology.kubernetes.io/zone": "us-east-1b",
    "topology.k8s.aws/zone-id": "use1-az1",
    "node.kubernetes.io/instance-type": "g5.xlarge",
    "karpenter.sh/capacity-type": "spot",
}
TAINT_ADDED = "2026-11-22T11:59:30Z"


def test_a_node_tainted_by_the_termination_handler_is_a_notice(
    cluster: FakeNodes, nodes_source: Callable[..., Any]
) -> None:
    cluster.nodes = [
        node("ip-10-0-1-1", provider_id="aws:///us-east-1b/i-0aa", labels=AWS_SPOT_NODE_LABELS),
        node(
            "ip-10-0-1-2",
            provider_id="aws:///us-east-1b/i-0bb",
            labels=AWS_SPOT_NODE_LABELS,
            taints=[
                {
                    "key": "aws-node-termination-handler/spot-itn",
                    "value": "i-0bb",
                    "effect": "NoExecute",
                    "timeAdded": TAINT_ADDED,
                }
            ],
        ),
    ]
    assert nodes_source().poll(NOW) == [
        InterruptionNotice(
            provider=Provider.AWS,
            region="us-east-1",
            instance_type="g5.xlarge",
            zone="use1-az1",
            market=Market.SPOT,
            deadline=datetime(2026, 11, 22, 12, 1, 30, tzinfo=UTC),
            source="test-kubernetes-nodes",
            detail="ip-10-0-1-2 (aws-node-termination-handler/spot-itn)",
        )
    ]


def test_gke_and_aks_spot_nodes_marked_for_termination_are_notices(
    cluster: FakeNodes, nodes_source: Callable[..., Any]
) -> None:
    cluster.nodes = [
        node(
            "gke-gpu-pool-1",
            provider_id="gce://proj/us-central1-a/gke-gpu-pool-1",
            labels={
                "topology.kubernetes.io/region": "us-central1",
                "topology.kubernetes.io/zone": "us-central1-a",
                "node.kubernetes.io/instance-type": "g2-standard-4",
                "cloud.google.com/gke-spot": "true",
            },
            taints=[{"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule"}],
        ),
        node(
            "aks-spot-0",
            provider_id="azure:///subscriptions/s/resourceGroups/rg/providers/"
            "Microsoft.Compute/virtualMachineScaleSets/aks-spot/virtualMachines/0",
            labels={
                "topology.kubernetes.io/region": "eastus",
                "topology.kubernetes.io/zone": "eastus-1",
                "node.kubernetes.io/instance-type": "Standard_NC4as_T4_v3",
                "kubernetes.azure.com/scalesetpriority": "spot",
            },
            taints=[
                {
                    "key": "kubernetes.azure.com/scalesetpriority",
                    "value": "spot",
                    "effect": "NoSchedule",
                },
                {"key": "ToBeDeletedByClusterAutoscaler", "value": "1764", "effect": "NoSchedule"},
            ],
        ),
    ]
    notices = nodes_source().poll(NOW)
    assert [(n.provider, n.region, n.zone, n.instance_type, n.deadline) for n in notices] == [
        (
            Provider.GCP,
            "us-central1",
            "us-central1-a",
            "g2-standard-4",
            NOW + timedelta(seconds=30),
        ),
        (Provider.AZURE, "eastus", "1", "Standard_NC4as_T4_v3", NOW + timedelta(seconds=30)),
    ]


def test_a_termination_imminent_condition_is_a_notice(
    cluster: FakeNodes, nodes_source: Callable[..., Any]
) -> None:
    condition = {
        "type": "TerminationImminent",
        "status": "True",
        "lastTransitionTime": TAINT_ADDED,
        "reason": "SpotInterruption",
    }
    labels = {k: v for k, v in AWS_SPOT_NODE_LABELS.items() if k != "karpenter.sh/capacity-type"}
    cluster.nodes = [
        node("n1", provider_id="aws:///us-east-1b/i-1", labels=labels, conditions=[condition])
    ]
    (notice,) = nodes_source().poll(NOW)
    assert notice.market is Market.SPOT and notice.detail == "n1 (TerminationImminent)"


def test_on_demand_nodes_and_nodes_of_unknown_capacity_are_left_out(
    cluster: FakeNodes, nodes_source: Callable[..., Any]
) -> None:
    disrupted = [{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]
    on_demand = {**AWS_SPOT_NODE_LABELS, "karpenter.sh/capacity-type": "on-demand"}
    unknown = {k: v for k, v in AWS_SPOT_NODE_LABELS.items() if k != "karpenter.sh/capacity-type"}
    cluster.nodes = [
        node("od", provider_id="aws:///us-east-1b/i-1", labels=on_demand, taints=disrupted),
        node("unknown", provider_id="aws:///us-east-1b/i-2", labels=unknown, taints=disrupted),
    ]
    assert nodes_source().poll(NOW) == []
    (notice,) = nodes_source(include_on_demand=True).poll(NOW)
    assert notice.market is Market.ON_DEMAND and notice.detail.startswith("od ")


def test_a_node_without_the_labels_or_provider_a_notice_needs_is_skipped(
    cluster: FakeNodes, nodes_source: Callable[..., Any]
) -> None:
    itn = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoExecute"}]
    no_region = {k: v for k, v in AWS_SPOT_NODE_LABELS.items() if "region" not in k}
    cluster.nodes = [
        node("no-region", provider_id="aws:///us-east-1b/i-1", labels=no_region, taints=itn),
        node(
            "kind",
            provider_id="kind://docker/kind/kind-worker",
            labels=AWS_SPOT_NODE_LABELS,
            taints=itn,
        ),
        node("good", provider_id="aws:///us-east-1b/i-3", labels=AWS_SPOT_NODE_LABELS, taints=itn),
    ]
    with capture_logs() as logs:
        notices = nodes_source().poll(NOW)
    assert [n.detail for n in notices] == ["good (aws-node-termination-handler/spot-itn)"]
    skipped = [e["node"] for e in logs if "skipped" in e["event"]]
    assert skipped == ["no-region", "kind"]


def test_nodes_are_listed_page_by_page_with_the_label_selector(
    cluster: FakeNodes, nodes_source: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import arbiter.interruptions.kubernetes_nodes as module

    monkeypatch.setattr(module, "PAGE", 2)
    itn = [{"key": "aws-node-termination-handler/spot-itn", "effect": "NoExecute"}]
    gpu = {**AWS_SPOT_NODE_LABELS, "nvidia.com/gpu.present": "true"}
    cluster.nodes = [
        node(f"n{i}", provider_id=f"aws:///us-east-1b/i-{i}", labels=gpu, taints=itn)
        for i in range(5)
    ] + [node("cpu", provider_id="aws:///us-east-1b/i-9", labels=AWS_SPOT_NODE_LABELS, taints=itn)]
    notices = nodes_source(label_selector="nvidia.com/gpu.present=true").poll(NOW)
    assert len(notices) == 5
    listed = [r for r in cluster.requests if r.path == "/api/v1/nodes"]
    assert len(listed) == 3
    assert all(r.query["labelSelector"] == ["nvidia.com/gpu.present=true"] for r in listed)


@pytest.mark.parametrize(
    ("status", "error"),
    [(403, AuthFailed), (429, Throttled), (500, Unavailable), (410, BadPayload)],
)
def test_kubernetes_api_errors_are_translated(
    cluster: FakeNodes, nodes_source: Callable[..., Any], status: int, error: type[Exception]
) -> None:
    cluster.fail("/api/v1/nodes", status)
    with pytest.raises(error) as caught:
        nodes_source().poll(NOW)
    if isinstance(caught.value, Throttled):
        assert caught.value.retry_after == 3


def test_an_unreachable_api_server_is_unavailable(tmp_path: Path, make: Callable[..., Any]) -> None:
    with FakeNodes() as stopped:
        config = stopped.write_kubeconfig(tmp_path / "kubeconfig")
    source = make("kubernetes-nodes", kubeconfig=str(config), timeout=1)
    with pytest.raises(Unavailable, match="cannot reach the API server"):
        source.poll(NOW)


def test_a_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_interruption_source("kubernetes-nodes", "k", {"kubeconfig": str(tmp_path / "nope")})
    assert caught.value.key == "kubeconfig"


# ---------------------------------------------------------------------- end to end

SPOT = Offer(
    provider=Provider.AWS,
    region="us-east-1",
    zone="use1-az1",
    instance_type="g5.xlarge",
    market=Market.SPOT,
)
ON_DEMAND = Offer(
    provider=Provider.AWS, region="us-east-1", instance_type="g5.xlarge", market=Market.ON_DEMAND
)
GCP_SPOT = Offer(
    provider=Provider.GCP, region="us-central1", instance_type="g2-standard-4", market=Market.SPOT
)
GCP_ON_DEMAND = GCP_SPOT.model_copy(update={"market": Market.ON_DEMAND})

POLICY = """\
apiVersion: arbiter/v1
kind: PlacementPolicy
metadata: {name: us}
select: {data_classes: [internal]}
constraints:
  - id: us-only
    sovereignty: {data_classes: [internal], jurisdictions: [US]}
migration:
  min_saving: {pct: 10}
  sustained_for: 0s
  cooldown: 0s
"""
WORKLOAD = """\
apiVersion: arbiter/v1
kind: Workload
metadata: {name: chat}
spec:
  data_class: internal
  gpu_options: [{model: %s, tokens_per_second: 500}]
  replicas: 1
  warmup_seconds: 0
"""


class TimedExecutor(FakeExecutor):
    """FakeExecutor that notes the wall-clock time of every ensure call."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.ensured: list[tuple[str, int, float]] = []

    def ensure(self, workload: Workload, offer: Offer, replicas: int) -> Any:
        self.ensured.append((offer.key, replicas, time.perf_counter()))
        return super().ensure(workload, offer, replicas)

    def first_ensure(self, offer: Offer) -> float | None:
        return next((t for key, n, t in self.ensured if key == offer.key and n > 0), None)


def make_world(
    store: Store,
    tmp: Path,
    clock: Clock,
    *,
    gpu: str,
    instance_type: InstanceType,
    policy: str = POLICY,
    workload: str = WORKLOAD,
) -> tuple[Reconciler, TimedExecutor]:
    (tmp / "policies").mkdir()
    (tmp / "workloads").mkdir()
    (tmp / "policies" / "us.yaml").write_text(policy)
    (tmp / "workloads" / "chat.yaml").write_text(workload % gpu)
    settings = Settings.model_validate(
        {
            "daemon": {"mode": Mode.ENFORCE.value, "kill_switch_file": str(tmp / "KILL")},
            "policies": {"paths": [str(tmp / "policies")], "workloads": [str(tmp / "workloads")]},
        }
    )
    store.instance_types.upsert([instance_type], now=clock.now())
    executor = TimedExecutor(clock)
    migrator = Migrator(store, executor, executor, clock, actor="test")
    reconciler = Reconciler(store, migrator, settings, CATALOG, clock, stale_after={"test": 3600})
    return reconciler, executor


def record_prices(store: Store, clock: Clock, prices: dict[Offer, float]) -> None:
    store.prices.record(
        [
            PriceQuote(offer=o, usd_per_hour=p, observed_at=clock.now(), source="test")
            for o, p in prices.items()
        ]
    )


G5 = InstanceType(
    provider=Provider.AWS,
    name="g5.xlarge",
    vcpus=4,
    memory_gib=16,
    accelerator="A10G",
    accelerator_count=1,
    accelerator_memory_gib=24,
)
G2 = InstanceType(
    provider=Provider.GCP,
    name="g2-standard-4",
    vcpus=4,
    memory_gib=16,
    accelerator="L4",
    accelerator_count=1,
    accelerator_memory_gib=24,
)


def test_a_notice_evacuates_a_spot_placement_to_on_demand_on_the_next_reconcile(
    store: Store, tmp_path: Path, metadata: FakeMetadata, make: Callable[..., Any]
) -> None:
    clock = FakeClock(NOW)
    reconciler, executor = make_world(store, tmp_path, clock, gpu="A10G", instance_type=G5)
    record_prices(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01})
    for _ in range(4):
        reconciler.tick()
        clock.advance(timedelta(seconds=15))
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]

    # the instance learns of its interruption; IMDS says so
    metadata.aws_instance_action = json.dumps(
        {"action": "terminate", "time": (clock.now() + timedelta(minutes=2)).isoformat()}
    )
    source = make("aws-imds", endpoint=metadata.url)
    started = time.perf_counter()
    (notice,) = source.poll(clock.now())
    assert notice.matches(SPOT) and reconciler.notice(notice)
    result = reconciler.tick()

    replacement = executor.first_ensure(ON_DEMAND)
    assert replacement is not None
    assert replacement - started < 1.0  # seconds, wall clock: notice → replacement asked for
    (migration,) = [store.migrations.get(m) for m in result.started]
    assert migration is not None
    assert migration.urgent and migration.reason.startswith("evacuate")
    for _ in range(6):
        clock.advance(timedelta(seconds=15))
        reconciler.tick()
    assert store.workloads.placements("chat") == [(ON_DEMAND.key, 1)]
    done = store.migrations.get(migration.id)
    assert done is not None and done.state is MigrationState.DONE
    assert executor.group("chat", SPOT) is None  # the spot group was released


def test_the_daemon_polls_a_source_and_reconciles_at_once_on_a_new_notice(
    tmp_path: Path, metadata: FakeMetadata
) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from arbiter.daemon import Daemon
    from arbiter.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    upgrade(url)
    engine = make_engine(url)
    clock = SystemClock()
    store = Store(engine)
    reconciler, executor = make_world(store, tmp_path, clock, gpu="L4", instance_type=G2)
    record_prices(store, clock, {GCP_SPOT: 0.30, GCP_ON_DEMAND: 0.70})
    for _ in range(4):
        reconciler.tick()
    assert store.workloads.placements("chat") == [(GCP_SPOT.key, 1)]

    settings = reconciler.settings.model_copy(
        update={
            "interruptions": {
                "gce": InterruptionSourceConfig(
                    kind="gcp-metadata", interval=0.1, options={"endpoint": metadata.url}
                ),
                "off": InterruptionSourceConfig(kind="aws-imds", enabled=False),
            }
        }
    )
    daemon = Daemon(settings, engine, CATALOG, database_url=url, clock=clock)
    daemon.try_lead()
    daemon.reconciler = reconciler
    daemon._scheduler = BackgroundScheduler(timezone="UTC")
    daemon._scheduler.add_job(daemon.reconcile, "interval", seconds=3600, id="reconcile")
    daemon.add_interruption_jobs()
    assert sorted(j.id for j in daemon._scheduler.get_jobs()) == ["interruptions:gce", "reconcile"]
    metadata.fail("/computeMetadata/v1/instance/preempted", 503, times=2)  # logged, polled again
    daemon._scheduler.start()
    try:
        assert wait_until(lambda: len(metadata.paths("GET")) >= 6, timeout=5)
        started = time.perf_counter()
        metadata.set_gcp_preempted("TRUE")
        assert wait_until(lambda: executor.first_ensure(GCP_ON_DEMAND) is not None, timeout=5)
        replacement = executor.first_ensure(GCP_ON_DEMAND)
        assert replacement is not None and replacement - started < 2.0
    finally:
        daemon._scheduler.shutdown(wait=True)
        engine.dispose()
    (notice,) = reconciler.notices
    assert notice.matches(GCP_SPOT) and notice.source == "gce"
    assert any(m.urgent and m.reason.startswith("evacuate") for m in store.migrations.recent())


# A batch workload whose policy does not replace lost spot capacity on on-demand.
POLICY_WITHOUT_FALLBACK = POLICY + "capacity:\n  spot: {fallback: none}\n"
BATCH_WORKLOAD = WORKLOAD + "  interruption_tolerance: high\n"
SPOT_ELSEWHERE = SPOT.model_copy(update={"zone": "use1-az2"})


def spot_notice(clock: Clock) -> InterruptionNotice:
    return InterruptionNotice(
        provider=Provider.AWS,
        region="us-east-1",
        zone="use1-az1",
        instance_type="g5.xlarge",
        deadline=clock.now() + timedelta(minutes=2),
        source="test",
    )


def test_without_fallback_a_notice_leaves_the_spot_replica_waiting_for_spot_and_says_so(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    from arbiter.daemon import Daemon
    from arbiter.domain.planner import Gate

    clock = FakeClock(NOW)
    reconciler, executor = make_world(
        store,
        tmp_path,
        clock,
        gpu="A10G",
        instance_type=G5,
        policy=POLICY_WITHOUT_FALLBACK,
        workload=BATCH_WORKLOAD,
    )
    record_prices(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01})
    for _ in range(4):
        reconciler.tick()
        clock.advance(timedelta(seconds=15))
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]
    daemon = Daemon(reconciler.settings, store.engine, CATALOG, database_url=store_url, clock=clock)
    assert daemon.try_lead()
    daemon.reconciler = reconciler

    assert reconciler.notice(spot_notice(clock))
    with capture_logs() as logs:
        daemon.try_lead()
        daemon.reconcile()
        clock.advance(timedelta(seconds=15))
        daemon.try_lead()
        daemon.reconcile()
    assert executor.first_ensure(ON_DEMAND) is None, "replaced on on-demand"
    assert store.migrations.unfinished() == []
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]  # waiting, recorded there
    (warning,) = [e for e in logs if e["event"] == "waiting for spot capacity"]  # once
    assert warning["log_level"] == "warning" and warning["workload"] == "chat"
    assert "capacity.spot.fallback: none" in warning["detail"]
    assert daemon.reconcile_stats["waiting_for_spot"] == 1
    assessment = reconciler.assess(clock.now())
    assert assessment is not None
    assert [h.gate for h in assessment.plan.holds] == [Gate.WAITING_FOR_SPOT]

    # spot capacity the notice does not cover turns up: the replica moves there at once
    record_prices(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01, SPOT_ELSEWHERE: 0.45})
    with capture_logs() as logs:
        for _ in range(6):
            daemon.try_lead()
            daemon.reconcile()
            clock.advance(timedelta(seconds=15))
    assert store.workloads.placements("chat") == [(SPOT_ELSEWHERE.key, 1)]
    assert executor.first_ensure(ON_DEMAND) is None
    assert daemon.reconcile_stats["waiting_for_spot"] == 0
    assert any(e["event"] == "spot capacity back" for e in logs)


def test_with_on_demand_fallback_a_batch_workload_is_replaced_on_on_demand_at_once(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(NOW)
    reconciler, executor = make_world(
        store,
        tmp_path,
        clock,
        gpu="A10G",
        instance_type=G5,
        policy=POLICY + "capacity:\n  spot: {fallback: on_demand}\n",
        workload=BATCH_WORKLOAD,
    )
    record_prices(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01})
    for _ in range(4):
        reconciler.tick()
        clock.advance(timedelta(seconds=15))
    assert reconciler.notice(spot_notice(clock))
    result = reconciler.tick()
    assert [m.kind.value for m in result.plan.moves] == ["evacuate"]
    assert executor.first_ensure(ON_DEMAND) is not None


# ------------------------------------------ spot capacity lost without a notice


def poll(store: Store, clock: Clock, prices: dict[Offer, float], source: str = "test") -> None:
    """One successful poll of ``source`` listing exactly these prices."""
    store.prices.record(
        [
            PriceQuote(offer=o, usd_per_hour=p, observed_at=clock.now(), source=source)
            for o, p in prices.items()
        ]
    )
    store.sources.succeeded(source, at=clock.now())


def placed_on_spot(
    store: Store,
    tmp_path: Path,
    clock: FakeClock,
    *,
    policy: str = POLICY,
    workload: str = WORKLOAD,
) -> tuple[Reconciler, TimedExecutor]:
    reconciler, executor = make_world(
        store, tmp_path, clock, gpu="A10G", instance_type=G5, policy=policy, workload=workload
    )
    poll(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01})
    for _ in range(4):
        reconciler.tick()
        clock.advance(timedelta(seconds=15))
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]
    return reconciler, executor


def reclaim(executor: FakeExecutor, offer: Offer) -> None:
    """The provider takes the capacity back without a notice: the replicas are gone and
    none can be had there."""
    executor.reclaimed.add(offer.key)
    executor.no_capacity.add(offer.key)


def test_spot_capacity_gone_from_the_market_and_down_is_evacuated_without_a_notice(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(NOW)
    reconciler, executor = placed_on_spot(store, tmp_path, clock)
    reclaim(executor, SPOT)
    clock.advance(timedelta(minutes=1))
    poll(store, clock, {ON_DEMAND: 1.01})  # the spot offer is no longer listed
    with capture_logs() as logs:
        result = reconciler.tick()
    (move,) = result.plan.moves
    assert move.kind.value == "evacuate" and move.urgent
    assert move.reason.startswith(f"spot capacity lost: {SPOT.key}: gone from the market")
    assert "the executor reports 0 of 1 replicas ready" in move.reason
    (warning,) = [e for e in logs if e["event"] == "spot capacity lost without a notice"]
    assert warning["log_level"] == "warning" and warning["workload"] == "chat"
    assert warning["offer"] == SPOT.key and "gone from the market" in warning["detail"]
    for _ in range(6):
        clock.advance(timedelta(seconds=15))
        reconciler.tick()
    assert store.workloads.placements("chat") == [(ON_DEMAND.key, 1)]


def test_a_spot_quota_spent_to_zero_with_its_replicas_down_is_not_lost_capacity(
    store: Store, tmp_path: Path
) -> None:
    """The quota left is 0 because the placement's own VMs use it; a replica that is
    down there is the executor's to repair, not capacity lost."""
    clock = FakeClock(NOW)
    reconciler, executor = placed_on_spot(store, tmp_path, clock)
    reclaim(executor, SPOT)
    clock.advance(timedelta(minutes=1))
    poll(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01})
    store.capacity.record(
        [
            CapacitySignal(
                provider=Provider.AWS,
                region="us-east-1",
                instance_type="g5.xlarge",
                kind=CapacityKind.QUOTA_SPOT_GPUS_FREE,
                value=0,
                observed_at=clock.now(),
                source="test",
            )
        ]
    )
    with capture_logs() as logs:
        result = reconciler.tick()
    assert [m for m in result.plan.moves if m.kind.value == "evacuate"] == []
    assert [e for e in logs if e["event"] == "spot capacity lost without a notice"] == []
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]


def test_a_spot_offer_gone_from_the_market_whose_replicas_serve_is_left_running(
    store: Store, tmp_path: Path
) -> None:
    """A missing price quote is not lost capacity while the executor says the replicas
    are ready."""
    clock = FakeClock(NOW)
    reconciler, _ = placed_on_spot(store, tmp_path, clock)
    clock.advance(timedelta(minutes=1))
    poll(store, clock, {ON_DEMAND: 1.01})
    with capture_logs() as logs:
        result = reconciler.tick()
    assert result.plan.moves == ()
    assert [e for e in logs if e["event"] == "spot capacity lost without a notice"] == []
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]


def test_stale_market_data_never_counts_as_spot_capacity_lost(store: Store, tmp_path: Path) -> None:
    """The spot price's source has been failing for two hours (its data is stale) while
    another source lists on-demand: the replicas are down, but nothing fresh says the
    capacity is gone, so nothing is evacuated."""
    clock = FakeClock(NOW)
    reconciler, executor = placed_on_spot(store, tmp_path, clock)
    reclaim(executor, SPOT)
    clock.advance(timedelta(hours=2))
    store.sources.failed("test", at=clock.now(), error="unavailable")
    poll(store, clock, {ON_DEMAND: 1.01}, source="other")
    result = reconciler.tick()
    assert result.plan.moves == ()
    assert [h.gate.value for h in result.plan.holds] == ["min_saving"]
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]


def test_without_fallback_spot_capacity_lost_without_a_notice_waits_for_spot(
    store: Store, tmp_path: Path
) -> None:
    from arbiter.domain.planner import Gate

    clock = FakeClock(NOW)
    reconciler, executor = placed_on_spot(
        store, tmp_path, clock, policy=POLICY_WITHOUT_FALLBACK, workload=BATCH_WORKLOAD
    )
    reclaim(executor, SPOT)
    clock.advance(timedelta(minutes=1))
    poll(store, clock, {ON_DEMAND: 1.01})
    with capture_logs() as logs:
        result = reconciler.tick()
    assert result.plan.moves == ()
    assert [h.gate for h in result.plan.holds] == [Gate.WAITING_FOR_SPOT]
    assert any(e["event"] == "waiting for spot capacity" for e in logs)
    assert executor.first_ensure(ON_DEMAND) is None
    assert store.workloads.placements("chat") == [(SPOT.key, 1)]  # waiting, recorded there

    # the capacity is listed again and the executor has its replica back: nothing to do
    executor.reclaimed.discard(SPOT.key)
    clock.advance(timedelta(minutes=1))
    poll(store, clock, {SPOT: 0.40, ON_DEMAND: 1.01})
    with capture_logs() as logs:
        result = reconciler.tick()
    assert result.plan.moves == () and result.plan.holds == ()
    assert any(e["event"] == "spot capacity back" for e in logs)
