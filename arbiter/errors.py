"""arbiter's one exception tree.

Every error the project raises on purpose is an ``ArbiterError``. Adapters translate
vendor errors (botocore, google-api-core, azure-core, httpx, SQLAlchemy) at the
boundary with ``raise ... from exc`` so the core and the CLI never see SDK types::

    ArbiterError
    ├── ConfigError            bad config file or ARBITER_* variable (file, key)
    ├── CatalogError           bad region catalog or jurisdiction table (file, line, field)
    ├── ProviderError          a market-data source failed (source)
    │   ├── Throttled          temporary; may carry retry_after seconds
    │   ├── Unavailable        temporary; 5xx, timeouts, connection errors
    │   ├── AuthFailed         credentials missing or refused; not retried
    │   └── BadPayload         malformed or partial response; rejected whole
    ├── PolicyError            bad policy or workload file (file, line, field)
    ├── PlacementError
    │   └── Unplaceable        no compliant placement exists (reasons)
    ├── ExecutorError          an executor action failed (executor)
    │   └── CapacityUnavailable  no capacity for the offer now (offer_key, code)
    ├── GuardrailExceeded      a migration guardrail refused an action
    └── StoreError             the database is unreachable or out of date
        └── LeaseHeld          another daemon holds the lease

Each error carries its data as attributes, not only in its message, so callers
(and tests) can act on it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class ArbiterError(Exception):
    """Base of every error arbiter raises on purpose."""


class ConfigError(ArbiterError):
    """A config file or ARBITER_* environment variable is invalid."""

    def __init__(self, message: str, *, source: str, key: str | None = None) -> None:
        self.message = message
        self.source = source
        self.key = key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


def unknown_name_message(what: str, name: str, known: Iterable[str]) -> str:
    """The message for a name no registry knows: ``unknown WHAT 'NAME'; did you mean
    'CLOSE'? known: A, B`` (or ``unknown WHAT 'NAME'; known: A, B`` when none is close)."""
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {what} {name!r}{hint} known: {', '.join(choices)}"


def close_all(
    closes: Iterable[tuple[str, Callable[[], object]]],
    error: Callable[[str], ArbiterError],
    *,
    owner: str = "",
) -> None:
    """Call every ``(what, close)`` of ``closes``, each even when one before it raised:
    one client failing to close must not leave the others open. Then, if any failed,
    raise ``error("could not close WHAT: ERROR; WHAT: ERROR")`` naming each, chained
    from the first failure. A failure already reported as ``OWNER: ...`` (a part
    reporting as its owner) is not prefixed with ``owner`` twice."""
    failures: list[tuple[str, Exception]] = []
    for what, close in closes:
        try:
            close()
        except Exception as exc:  # any SDK or transport error: close the rest first
            failures.append((what, exc))
    if failures:
        prefix = f"{owner}: " if owner else ""
        detail = "; ".join(f"{what}: {str(exc).removeprefix(prefix)}" for what, exc in failures)
        raise error(f"could not close {detail}") from failures[0][1]


class CatalogError(ArbiterError):
    """The region catalog or jurisdiction table is invalid."""

    def __init__(
        self, message: str, *, source: str, line: int | None = None, field: str | None = None
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        where = source if line is None else f"{source}:{line}"
        if field:
            where = f"{where}: {field}"
        super().__init__(f"{where}: {message}")


class ProviderError(ArbiterError):
    """A market-data source failed."""

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


class Throttled(ProviderError):
    """The source asked us to slow down; temporary."""

    def __init__(self, message: str, *, source: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, source=source)


class Unavailable(ProviderError):
    """The source is temporarily unreachable or failing (5xx, timeout)."""


class AuthFailed(ProviderError):
    """Credentials are missing or were refused; retrying will not help."""


class BadPayload(ProviderError):
    """The response was malformed or partial; it is rejected whole."""

    def __init__(self, message: str, *, source: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message, source=source)


class PolicyError(ArbiterError):
    """A policy or workload file is invalid."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        self.field = field
        where = source
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}")


class PlacementError(ArbiterError):
    """Placement could not be computed."""


class Unplaceable(PlacementError):
    """No compliant placement exists for a workload; ``reasons`` says why."""

    def __init__(self, workload: str, reasons: tuple[str, ...]) -> None:
        self.workload = workload
        self.reasons = reasons
        super().__init__(f"{workload}: cannot be placed: " + "; ".join(reasons))


class ExecutorError(ArbiterError):
    """An executor could not carry out an action (provision, scale, route, release)."""

    def __init__(self, message: str, *, executor: str) -> None:
        self.executor = executor
        super().__init__(f"{executor}: {message}")


class CapacityUnavailable(ExecutorError):
    """The provider has no capacity for the offer right now (AWS
    InsufficientInstanceCapacity, GCP ZONE_RESOURCE_POOL_EXHAUSTED, Azure
    SkuNotAvailable / AllocationFailed, a Kubernetes pod that cannot be scheduled).
    The offer goes on a blocklist for a while and the workload is planned elsewhere."""

    def __init__(self, message: str, *, executor: str, offer_key: str, code: str = "") -> None:
        self.offer_key = offer_key
        self.code = code
        super().__init__(f"{offer_key}: {message}", executor=executor)


class GuardrailExceeded(ArbiterError):
    """A migration guardrail refused an action."""


class StoreError(ArbiterError):
    """The store is unreachable, misconfigured or not at the expected schema revision."""


class LeaseHeld(StoreError):
    """Another daemon holds the lease on a resource."""

    def __init__(self, name: str, holder: str) -> None:
        self.name = name
        self.holder = holder
        super().__init__(f"lease {name!r} is held by {holder}")
