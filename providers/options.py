"""What every source's options share: a closed pydantic model whose errors name
``sources.NAME.options`` and the key (the base, :class:`ClosedOptions`, serves the
interruption sources too), :func:`located` to turn those into the config file and line,
URL and secret validators, the timeout check."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr, ValidationError

from arbiter.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def https_url(value: str) -> str:
    """An https URL; plain http only for a loopback server (a local fake or proxy)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an https:// URL, got {value!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"must use https (plain http only on 127.0.0.1/localhost): {value!r}")
    return value.rstrip("/")


HttpsUrl = Annotated[str, AfterValidator(https_url)]


def not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


class ClosedOptions(BaseModel):
    """Base of an options table of a named, configured thing: closed and immutable.

    ``section`` is the config table the things are named in: errors name
    ``SECTION.NAME.options`` and the key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    section: ClassVar[str]

    @classmethod
    def parse(cls, name: str, options: Mapping[str, Any]) -> Self:
        """Validate ``options``; raise ConfigError naming ``SECTION.NAME.options`` and the key."""
        where = f"{cls.section}.{name}.options"
        if not isinstance(options, Mapping):
            raise ConfigError("expected a table of options", source=where)
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or None
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown option; known: {', '.join(cls.model_fields)}"
            # ``from None``: the pydantic error would repeat the input, maybe a secret.
            raise ConfigError(message, source=where, key=key) from None


@contextmanager
def located(table: str, origin: Callable[[str], str] | None) -> Iterator[None]:
    """Name where a setting was made in the ConfigErrors about ``table``
    (``sources.NAME``, ``interruptions.NAME``) raised inside.

    Options are checked when their source is built, after the config was loaded, so
    those errors say ``sources.NAME.options: KEY: ...``. ``origin`` (``Settings.origin_of``)
    turns the full key into the config file and line, or the variable, that set it:
    ``/etc/arbiter/config.toml:12: sources.NAME.options.KEY: ...``. Errors about anything
    else, and every error when there is no ``origin`` (settings made in code), pass
    unchanged.
    """
    try:
        yield
    except ConfigError as exc:
        if origin is None or not (exc.source == table or exc.source.startswith(f"{table}.")):
            raise
        key = f"{exc.source}.{exc.key}" if exc.key else exc.source
        raise ConfigError(exc.message, source=origin(key), key=key) from exc


class SourceOptions(ClosedOptions):
    """Base of every ``[sources.NAME.options]`` model."""

    section = "sources"


def check_timeout(name: str, timeout: float) -> float:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(
            "must be a positive number of seconds", source=f"sources.{name}", key="timeout"
        )
    return timeout
