"""What every boto3 user in arbiter shares: the session, the client settings, the clients.

Used by the market-data source (``providers/aws.py``), the interruption source
(``arbiter/interruptions/aws_sqs.py``) and the cloud executor
(``arbiter/executors/cloud_aws.py``). Each of them still translates botocore's errors
into its own part of the exception tree: what a failure means depends on the caller.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from arbiter.errors import ArbiterError, ConfigError, close_all

CREDENTIAL_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
    botocore.exceptions.SSOError,
)
"""botocore's ways of saying there are no usable credentials."""


@dataclass(frozen=True)
class ErrorResponse:
    """What AWS said in a refused request (a botocore ``ClientError``)."""

    code: str
    """The error code (``RequestLimitExceeded``…), or "" when AWS sent none."""
    message: str
    status: int
    """The HTTP status, or 0 when unknown."""
    headers: dict[str, str]
    """The response headers, names in lower case."""

    @classmethod
    def of(cls, exc: botocore.exceptions.ClientError) -> ErrorResponse:
        error = exc.response.get("Error") or {}
        metadata = exc.response.get("ResponseMetadata") or {}
        return cls(
            code=str(error.get("Code") or ""),
            message=str(error.get("Message") or ""),
            status=int(metadata.get("HTTPStatusCode") or 0),
            headers={
                str(k).lower(): str(v) for k, v in (metadata.get("HTTPHeaders") or {}).items()
            },
        )


def session(profile: str | None, *, source: str, key: str) -> boto3.session.Session:
    """A session of the named ``profile`` (None: the standard credential chain).

    An unknown profile is a ConfigError naming ``source`` and ``key``.
    """
    try:
        return boto3.session.Session(profile_name=profile)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(
            f"no profile {profile!r} in the shared AWS config or credentials files",
            source=source,
            key=key,
        ) from None


def client_config(
    *, connect_timeout: float, read_timeout: float, user_agent_extra: str = "arbiter/0.1"
) -> botocore.config.Config:
    """Client settings without botocore's own retries: the caller decides when to retry."""
    return botocore.config.Config(
        # total_max_attempts counts the first request; max_attempts would count retries.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        user_agent_extra=user_agent_extra,
    )


class Clients:
    """The clients of one session, made when first asked for and then reused.

    One client per (service, region); thread-safe, as botocore sessions are not.
    ``close()`` releases every client's connections.
    """

    def __init__(self, session: boto3.session.Session, config: botocore.config.Config) -> None:
        self._session = session
        self._config = config
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}

    def get(self, service: str, region: str, *, endpoint_url: str | None = None) -> Any:
        """The ``service`` client of ``region`` (at ``endpoint_url``, default AWS's own)."""
        with self._lock:
            if (service, region) not in self._clients:
                self._clients[service, region] = self._session.client(
                    service,
                    region_name=region,
                    endpoint_url=endpoint_url,
                    config=self._config,
                )
            return self._clients[service, region]

    def close(self) -> None:
        """Close every client made so far, each even when one before it fails; then, if
        any failed, one ArbiterError naming each (``could not close the ec2 client of
        us-east-1: ...; ...``), chained from the first. The owner's close passes it on:
        the daemon logs it, the cloud executor names it as its aws backend's failure."""
        with self._lock:
            clients = dict(self._clients)
            self._clients.clear()
        close_all(
            [
                (f"the {service} client of {region}", client.close)
                for (service, region), client in clients.items()
            ],
            ArbiterError,
        )
