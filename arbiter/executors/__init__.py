"""Executors: what turns a migration step into running (or released) replicas.

An explicit registry keyed by name; each executor lives in its own module and is
imported only when chosen, so the CLI never pays for the Kubernetes or cloud SDKs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

EXECUTORS: dict[str, str] = {
    "dry-run": "arbiter.executors.dry_run:DryRunExecutor",
    "local": "arbiter.executors.local:LocalExecutor",
    "kubernetes": "arbiter.executors.kubernetes:KubernetesExecutor",
    "cloud": "arbiter.executors.cloud:CloudExecutor",
}
"""name → ``module:factory``. Each factory takes ``(clock, options)``."""


def make_executor(
    name: str,
    clock: Any,
    options: dict[str, Any] | None = None,
    *,
    origin: Callable[[str], str] | None = None,
) -> Any:
    """The executor registered under ``name`` (it is also its traffic router).

    Its options are checked as it is built, after the config was loaded: ``origin``
    (``Settings.origin_of``) turns a setting's key into where it was set, so a
    ConfigError about ``executor.options.KEY`` names the config file and line (or the
    variable), as errors found while loading the config do.
    """
    from arbiter.errors import ConfigError, unknown_name_message

    target = EXECUTORS.get(name)
    if target is None:
        raise ConfigError(
            unknown_name_message("executor", name, EXECUTORS),
            source="config",
            key="executor.kind",
        )
    module, _, factory = target.partition(":")
    try:
        return getattr(importlib.import_module(module), factory)(clock, options or {})
    except ConfigError as exc:
        if origin is None or exc.key is None or not exc.key.startswith("executor."):
            raise
        raise ConfigError(exc.message, source=origin(exc.key), key=exc.key) from exc


def close_each(executor: str, closes: Iterable[tuple[str, Callable[[], object]]]) -> None:
    """Call every ``(what, close)`` of ``closes``, each even when one before it raised:
    one client failing to close must not leave the others open. Then, if any failed,
    raise one :class:`~arbiter.errors.ExecutorError` naming each (``could not close
    WHAT: ERROR; WHAT: ERROR``), chained from the first; the daemon logs it and stops
    all the same. (:func:`arbiter.errors.close_all`, for the executor.)"""
    from arbiter.errors import ExecutorError, close_all

    # a part that reported its own failures as this executor's: not named twice
    close_all(closes, lambda message: ExecutorError(message, executor=executor), owner=executor)
