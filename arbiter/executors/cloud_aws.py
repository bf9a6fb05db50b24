"""EC2 instances for the cloud executor (boto3).

* launch: one ``ec2:RunInstances`` per ensure, ``MinCount = MaxCount = count`` (all or
  nothing), the region's AMI, ``TagSpecifications`` (instance and volumes), user data =
  the start-up script, and for spot offers ``InstanceMarketOptions = {MarketType: spot,
  SpotOptions: {SpotInstanceType: one-time, InstanceInterruptionBehavior: terminate}}``
  (no ``MaxPrice``: capped at the on-demand price). Placement: the subnet configured
  for the offer's zone or region if any (``subnet_ids``); else the offer's zone as
  ``AvailabilityZone`` (``us-east-1d``) or ``AvailabilityZoneId`` (``use1-az4``, as spot
  price history names zones); else EC2's choice in the default VPC.
* idempotency: ``ClientToken`` = hash of (group, every instance id of the group EC2
  still lists — terminated ones included —, count, the 10-minute window of ``now``).
  A retried or re-issued launch that EC2 has not yet shown in ``DescribeInstances``
  (which is eventually consistent) gets the same token, so EC2 returns the first
  launch instead of starting a second one; a later launch of the group gets a new one.
* list: ``ec2:DescribeInstances`` filtered by tag in the offer's region (``groups()``:
  every region of ``image_ids``). ``pending``/``running`` are live, ``stopping``/
  ``stopped`` dead, ``shutting-down``/``terminated`` gone.
* terminate: ``ec2:TerminateInstances`` (per region, ≤ 1000 ids per call).
* GPUs per instance: ``ec2:DescribeInstanceTypes`` (``GpuInfo``).

IAM: ``ec2:RunInstances``, ``ec2:CreateTags`` (on create), ``ec2:DescribeInstances``,
``ec2:TerminateInstances``, ``ec2:DescribeInstanceTypes``, plus ``iam:PassRole`` for an
``instance_profile``.

Errors: ``InsufficientInstanceCapacity``, ``InsufficientHostCapacity``,
``InsufficientCapacity``, ``UnfulfillableCapacity``, ``SpotMaxPriceTooLow``,
``MaxSpotInstanceCountExceeded`` and ``VcpuLimitExceeded`` (the account's vCPU quota
of the GPU family) → CapacityUnavailable with that code; every other ``ClientError``,
connection error and missing credentials → ExecutorError. botocore does not retry
(``total_max_attempts = 1``): ICE is a 5xx, which it would otherwise retry silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from arbiter.domain.market import Market, Offer, Provider
from arbiter.errors import CapacityUnavailable, ExecutorError
from arbiter.executors.cloud import (
    EXECUTOR,
    TAG_GROUP,
    TAG_OFFER_KEY,
    TAG_REPLICAS,
    TAG_WORKLOAD,
    AwsVmOptions,
    LaunchSpec,
    Vm,
    VmState,
)
from providers import aws_clients

CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "UnfulfillableCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "VcpuLimitExceeded",
    }
)
_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "OptInRequired",
    }
)
_STATES = {
    "pending": VmState.STARTING,
    "running": VmState.RUNNING,
    "stopping": VmState.DEAD,
    "stopped": VmState.DEAD,
    "shutting-down": VmState.GONE,
    "terminated": VmState.GONE,
}
_HOW_TO_GIVE_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN), name a "
    "profile with executor.options.aws.profile (or AWS_PROFILE), or run with an IAM role"
)
_TOKEN_WINDOW_SECONDS = 600


class AwsVms:
    """The EC2 backend of :class:`~arbiter.executors.cloud.CloudExecutor`."""

    provider = Provider.AWS

    def __init__(
        self,
        options: AwsVmOptions,
        *,
        timeout: float,
        operation_timeout: float,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.options = options
        if session is None:
            session = aws_clients.session(
                options.profile, source="config", key="executor.options.aws.profile"
            )
        self._clients = aws_clients.Clients(
            session,
            aws_clients.client_config(
                connect_timeout=timeout,
                read_timeout=timeout,
                user_agent_extra="arbiter/0.1 executor/cloud",
            ),
        )

    def client(self, region: str) -> Any:
        """The EC2 client of ``region`` (one per region, reused)."""
        return self._clients.get("ec2", region, endpoint_url=self.options.endpoint_url)

    def close(self) -> None:
        self._clients.close()

    # -- VmBackend -------------------------------------------------------------------

    def gpus_per_instance(self, offer: Offer) -> float:
        with _calling("ec2:DescribeInstanceTypes", offer.region):
            found = self.client(offer.region).describe_instance_types(
                Filters=[{"Name": "instance-type", "Values": [offer.instance_type]}]
            )["InstanceTypes"]
        if not found:
            raise ExecutorError(
                f"{offer.key}: EC2 knows no instance type {offer.instance_type!r} "
                f"in {offer.region}",
                executor=EXECUTOR,
            )
        gpus = found[0].get("GpuInfo", {}).get("Gpus", [])
        return float(sum(int(gpu.get("Count") or 0) for gpu in gpus))

    def find(
        self, *, group: str | None = None, workload: str | None = None, region: str | None = None
    ) -> list[Vm]:
        if group is not None:
            tag_filter = {"Name": f"tag:{TAG_GROUP}", "Values": [group]}
        elif workload is not None:
            tag_filter = {"Name": f"tag:{TAG_WORKLOAD}", "Values": [workload]}
        else:
            tag_filter = {"Name": "tag-key", "Values": [TAG_GROUP]}
        regions = [region] if region is not None else sorted(self.options.image_ids)
        vms: list[Vm] = []
        for name in regions:
            with _calling("ec2:DescribeInstances", name):
                pages = (
                    self.client(name)
                    .get_paginator("describe_instances")
                    .paginate(Filters=[tag_filter], PaginationConfig={"PageSize": 500})
                )
                for page in pages:
                    for reservation in page.get("Reservations", []):
                        for instance in reservation.get("Instances", []):
                            vm = _vm(instance, name)
                            if vm is not None:
                                vms.append(vm)
        return vms

    def launch(
        self, spec: LaunchSpec, count: int, present: Sequence[Vm], now: datetime
    ) -> list[Vm]:
        offer = spec.offer
        image = self.options.image_ids.get(offer.region)
        if image is None:
            raise ExecutorError(
                f"{offer.key}: no AMI for {offer.region}; "
                f"set executor.options.aws.image_ids.{offer.region}",
                executor=EXECUTOR,
            )
        tags = [
            {"Key": key, "Value": value}
            for key, value in {
                **spec.tags(),
                TAG_OFFER_KEY: offer.key,
                "Name": spec.instance_name(0).rsplit("-", 1)[0],
            }.items()
        ]
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": offer.instance_type,
            "MinCount": count,
            "MaxCount": count,
            "ClientToken": _client_token(spec.group, present, count, now),
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if spec.startup_script is not None:
            params["UserData"] = spec.startup_script  # boto3 base64-encodes it
        if offer.market is Market.SPOT:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        subnet = self.options.subnet_ids.get(offer.zone or "") or self.options.subnet_ids.get(
            offer.region
        )
        if subnet is not None:
            params["SubnetId"] = subnet
        elif offer.zone is not None:
            is_name = offer.zone.startswith(offer.region)
            params["Placement"] = {
                "AvailabilityZone" if is_name else "AvailabilityZoneId": offer.zone
            }
        if self.options.security_group_ids:
            params["SecurityGroupIds"] = list(self.options.security_group_ids)
        if self.options.key_name:
            params["KeyName"] = self.options.key_name
        if self.options.instance_profile:
            profile = self.options.instance_profile
            params["IamInstanceProfile"] = (
                {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
            )
        with _calling("ec2:RunInstances", offer.region, offer_key=offer.key):
            response = self.client(offer.region).run_instances(**params)
        launched = [_vm(instance, offer.region, spec=spec) for instance in response["Instances"]]
        vms = [vm for vm in launched if vm is not None]
        if any(vm.state is VmState.GONE for vm in vms):
            # The token matched an earlier launch whose instances have since ended.
            raise ExecutorError(
                f"{offer.key}: RunInstances returned terminated instances of an earlier "
                "launch (ClientToken reuse); retry in a few minutes",
                executor=EXECUTOR,
            )
        return vms

    def terminate(self, vms: Sequence[Vm]) -> None:
        by_region: dict[str, list[str]] = {}
        for vm in vms:
            by_region.setdefault(vm.region, []).append(vm.id)
        for region, ids in sorted(by_region.items()):
            for start in range(0, len(ids), 1000):
                batch = ids[start : start + 1000]
                with _calling("ec2:TerminateInstances", region):
                    try:
                        self.client(region).terminate_instances(InstanceIds=batch)
                    except botocore.exceptions.ClientError as exc:
                        if aws_clients.ErrorResponse.of(exc).code != "InvalidInstanceID.NotFound":
                            raise


def _vm(instance: dict[str, Any], region: str, spec: LaunchSpec | None = None) -> Vm | None:
    tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags") or []}
    if spec is not None:  # RunInstances answers may omit the tags just given
        tags = {**spec.tags(), TAG_OFFER_KEY: spec.offer.key, **tags}
    state = _STATES.get(str((instance.get("State") or {}).get("Name")), VmState.DEAD)
    if TAG_GROUP not in tags or TAG_WORKLOAD not in tags:
        return None
    try:
        replicas = max(1, int(tags.get(TAG_REPLICAS, "1")))
    except ValueError:
        replicas = 1
    launch_time = instance.get("LaunchTime")
    addresses = {
        key: str(instance[field])
        for key, field in (("private_ip", "PrivateIpAddress"), ("public_ip", "PublicIpAddress"))
        if instance.get(field)
    }
    return Vm(
        provider=Provider.AWS,
        id=str(instance["InstanceId"]),
        name=tags.get("Name", str(instance["InstanceId"])),
        region=region,
        zone=(instance.get("Placement") or {}).get("AvailabilityZone"),
        state=state,
        workload=tags[TAG_WORKLOAD],
        group=tags[TAG_GROUP],
        offer_key=tags.get(TAG_OFFER_KEY),
        replicas=replicas,
        created=launch_time.isoformat() if isinstance(launch_time, datetime) else "",
        addresses=addresses,
    )


def _client_token(group: str, present: Sequence[Vm], count: int, now: datetime) -> str:
    window = int(now.timestamp()) // _TOKEN_WINDOW_SECONDS
    seen = ",".join(sorted(vm.id for vm in present))
    text = f"{group}|{seen}|{count}|{window}"
    return "arbiter-" + hashlib.sha256(text.encode()).hexdigest()[:48]


@contextmanager
def _calling(action: str, region: str, *, offer_key: str | None = None) -> Iterator[None]:
    """botocore failures of ``action`` → CapacityUnavailable / ExecutorError."""
    call = f"{action} ({region})"
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        response = aws_clients.ErrorResponse.of(exc)
        code, message = response.code, " ".join(response.message.split())
        if offer_key is not None and code in CAPACITY_CODES:
            raise CapacityUnavailable(
                f"{call}: {code}: {message}", executor=EXECUTOR, offer_key=offer_key, code=code
            ) from exc
        if code in _AUTH_CODES or code.startswith("AccessDenied"):
            raise ExecutorError(
                f"{call}: {code}: AWS refused the credentials or they lack the IAM "
                f"permission {action}: {message}",
                executor=EXECUTOR,
            ) from exc
        raise ExecutorError(f"{call}: {code or 'error'}: {message}", executor=EXECUTOR) from exc
    except aws_clients.CREDENTIAL_ERRORS as exc:
        raise ExecutorError(
            f"{call}: no usable AWS credentials ({exc}); {_HOW_TO_GIVE_CREDENTIALS}",
            executor=EXECUTOR,
        ) from exc
    except botocore.exceptions.BotoCoreError as exc:
        # EndpointConnectionError, timeouts, unparseable answers, bad parameters.
        raise ExecutorError(f"{call}: {exc}", executor=EXECUTOR) from exc
