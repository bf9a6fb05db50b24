"""Executors: what turns a migration step into running (or released) replicas.

An explicit registry keyed by name; each executor lives in its own module and is
imported only when chosen, so the CLI never pays for the Kubernetes or cloud SDKs.
"""

from __future__ import annotations

import importlib
from typing import Any

EXECUTORS: dict[str, str] = {
    "dry-run": "arbiter.executors.dry_run:DryRunExecutor",
    "local": "arbiter.executors.local:LocalExecutor",
    "kubernetes": "arbiter.executors.kubernetes:KubernetesExecutor",
    "cloud": "arbiter.executors.cloud:CloudExecutor",
}
"""name → ``module:factory``. Each factory takes ``(clock, options)``."""


def make_executor(name: str, clock: Any, options: dict[str, Any] | None = None) -> Any:
    """The executor registered under ``name`` (it is also its traffic router)."""
    from arbiter.errors import ConfigError, unknown_name_message

    target = EXECUTORS.get(name)
    if target is None:
        raise ConfigError(
            unknown_name_message("executor", name, EXECUTORS),
            source="config",
            key="executor.kind",
        )
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)(clock, options or {})
