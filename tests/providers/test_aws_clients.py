"""The clients every boto3 user shares (providers/aws_clients.py): closing them.

Real boto3 clients, never sent a request: only their ``close()`` is exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from arbiter.errors import ArbiterError
from providers import aws_clients
from tests.fakes.aws import use_fake_credentials


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_fake_credentials(monkeypatch, tmp_path)


def clients_of(*where: tuple[str, str]) -> tuple[aws_clients.Clients, dict[str, Any]]:
    """Clients with one client per ``(service, region)`` made, each by its name."""
    clients = aws_clients.Clients(
        aws_clients.session(None, source="test", key="profile"),
        aws_clients.client_config(connect_timeout=1, read_timeout=1),
    )
    return clients, {f"{s} {r}": clients.get(s, r) for s, r in where}


def record_closes(
    monkeypatch: pytest.MonkeyPatch, made: dict[str, Any], *failing: str
) -> list[str]:
    """Each client's ``close()`` recorded (in order); those named in ``failing`` raise."""
    closed: list[str] = []
    for name, client in made.items():

        def close(name: str = name, real: Any = client.close) -> None:
            closed.append(name)
            if name in failing:
                raise OSError(f"{name}: pool already torn down")
            real()

        monkeypatch.setattr(client, "close", close)
    return closed


WHERE = (("ec2", "us-east-1"), ("sqs", "eu-west-1"), ("pricing", "us-east-1"))


def test_close_closes_every_client_though_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    clients, made = clients_of(*WHERE)
    closed = record_closes(monkeypatch, made, "ec2 us-east-1")
    with pytest.raises(ArbiterError) as caught:
        clients.close()
    assert closed == ["ec2 us-east-1", "sqs eu-west-1", "pricing us-east-1"]
    assert str(caught.value) == (
        "could not close the ec2 client of us-east-1: ec2 us-east-1: pool already torn down"
    )
    assert isinstance(caught.value.__cause__, OSError)


def test_close_names_every_failure_chained_from_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clients, made = clients_of(*WHERE)
    closed = record_closes(monkeypatch, made, "ec2 us-east-1", "pricing us-east-1")
    with pytest.raises(ArbiterError) as caught:
        clients.close()
    assert closed == ["ec2 us-east-1", "sqs eu-west-1", "pricing us-east-1"]
    assert str(caught.value) == (
        "could not close the ec2 client of us-east-1: ec2 us-east-1: pool already torn down; "
        "the pricing client of us-east-1: pricing us-east-1: pool already torn down"
    )
    assert str(caught.value.__cause__) == "ec2 us-east-1: pool already torn down"


def test_close_without_failures_raises_nothing_and_a_second_close_closes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clients, made = clients_of(*WHERE)
    closed = record_closes(monkeypatch, made)
    clients.close()
    clients.close()
    assert closed == ["ec2 us-east-1", "sqs eu-west-1", "pricing us-east-1"]


def test_a_client_asked_for_after_close_is_a_new_one() -> None:
    clients, made = clients_of(("ec2", "us-east-1"))
    clients.close()
    assert clients.get("ec2", "us-east-1") is not made["ec2 us-east-1"]
    clients.close()
