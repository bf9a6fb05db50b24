"""The explicit registry of market-data sources, keyed by the ``kind`` used in the
config (``[sources.NAME] kind = "aws"``). Modules are imported only when a source of
their kind is built, so the CLI stays fast and a missing optional SDK only matters to
those who use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from arbiter.errors import ConfigError

# kind -> "module:factory". A factory is called as
#   factory(name: str, options: Mapping[str, Any], *, timeout: float) -> source
# and raises ConfigError naming sources.<name>.options.<key> for bad options.
SOURCES: dict[str, str] = {
    "aws": "providers.aws:build",
    "azure": "providers.azure:build",
    "electricitymaps": "providers.electricitymaps:build",
    "gcp": "providers.gcp:build",
    "replay": "providers.replay:build",
    "static-carbon": "providers.static_carbon:build",
    "ukci": "providers.ukci:build",
    "watttime": "providers.watttime:build",
}


def factory(kind: str) -> Callable[..., Any]:
    if kind not in SOURCES:
        raise ConfigError(
            f"unknown source kind {kind!r}; known: {', '.join(sorted(SOURCES))}",
            source="sources",
        )
    module_name, _, attr = SOURCES[kind].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)  # type: ignore[no-any-return]


def build_source(
    kind: str,
    name: str,
    options: Mapping[str, Any],
    *,
    timeout: float,
    origin: Callable[[str], str] | None = None,
) -> Any:
    """The source of ``kind`` named ``name``; ConfigError for bad options, naming the
    config file and line (or the variable) that set the option when ``origin``
    (``Settings.origin_of``) is given, else ``sources.NAME.options`` and the key."""
    from providers.options import located

    with located(f"sources.{name}", origin):
        return factory(kind)(name, options, timeout=timeout)
