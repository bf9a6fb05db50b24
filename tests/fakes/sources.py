"""A market-data source kind for tests of building and closing sources
(``arbiter.polling.build_sources``, ``arbiter run``, ``arbiter poll``): ``closing``,
whose sources hold something to close and note each close in :data:`CLOSED`.

:func:`register` adds the kind to the registry and the config's known kinds for the
length of a test; ``options = { fail_close = true }`` makes a source's close fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

import arbiter.config
import providers.registry

CLOSED: list[str] = []
"""The names of the ``closing`` sources closed, in order."""


class ClosingSource:
    """A market-data source holding something to close; ``fail_close`` makes it fail."""

    def __init__(self, name: str, *, fail_close: bool) -> None:
        self.name = name
        self.fail_close = fail_close

    def close(self) -> None:
        CLOSED.append(self.name)
        if self.fail_close:
            raise OSError(f"{self.name}: pool already torn down")


def build(name: str, options: Mapping[str, Any], *, timeout: float) -> ClosingSource:
    return ClosingSource(name, fail_close=bool(options.get("fail_close")))


def register(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``closing`` a source kind for this test; returns :data:`CLOSED`, emptied."""
    monkeypatch.setitem(providers.registry.SOURCES, "closing", f"{__name__}:build")
    monkeypatch.setattr(arbiter.config, "SOURCE_KINDS", (*arbiter.config.SOURCE_KINDS, "closing"))
    CLOSED.clear()
    return CLOSED


CONFIG = """\
[daemon]
mode = "observe"

[sources.first]
kind = "closing"

[sources.second]
kind = "closing"
options = { fail_close = true }

[sources.third]
kind = "closing"

[sources.replay]
kind = "replay"
options = { speed = 60, end = "2024-01-01T00:00:00Z" }
"""
"""Three sources that build, the second failing to close, then one that does not build
(its end is before its start)."""

BUILDING = CONFIG.split("[sources.replay]")[0]
"""The three sources that build, alone."""
