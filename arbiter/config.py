"""Configuration: a TOML file plus ``ARBITER_*`` environment overrides.

Where each setting comes from, highest first:

1. command-line flags (``--database-url``, ``--mode``) — applied by the CLI;
2. environment variables: ``ARBITER_<SECTION>__<KEY>`` for any key (e.g.
   ``ARBITER_DAEMON__MODE=enforce``), plus the short forms in :data:`ENV_ALIASES`
   (``ARBITER_DATABASE_URL``, ``ARBITER_MODE``, ``ARBITER_LOG_LEVEL``, ...);
3. the config file: ``--config``, else ``ARBITER_CONFIG``, else the first of
   ``$XDG_CONFIG_HOME/arbiter/config.toml`` and ``/etc/arbiter/config.toml`` that exists;
4. defaults: the embedded default, a SQLite file in the user's data directory.

Unknown keys are errors. Every error names the file (or variable) and the key.
Secrets (database passwords, API keys) are held as ``SecretStr`` or masked URLs and
never logged or printed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)

from arbiter.domain.values import parse_duration
from arbiter.errors import ConfigError, unknown_name_message
from providers.registry import SOURCES


def _duration(value: Any) -> float:
    # parse_duration raises AttributeError (which pydantic does not catch) for a list,
    # a table or null: say what was expected instead of failing with a traceback
    if not isinstance(value, str | int | float):
        kind = "a table" if isinstance(value, Mapping) else type(value).__name__
        raise ValueError(f"expected a duration like '30s', '5m', '1h30m', got {kind}")
    return parse_duration(value)


Seconds = Annotated[float, BeforeValidator(_duration)]
"""A duration: a number of seconds or a string like '30s', '5m', '1h30m'."""

SOURCE_KINDS = tuple(sorted(SOURCES))

ENV_PREFIX = "ARBITER_"
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "ARBITER_DATABASE_URL": ("database", "url"),
    "ARBITER_MODE": ("daemon", "mode"),
    "ARBITER_LOG_LEVEL": ("logging", "level"),
    "ARBITER_LOG_FORMAT": ("logging", "format"),
}
NOT_SETTINGS = {"ARBITER_CONFIG"}
MAX_CONFIG_BYTES = 1024 * 1024
"""A config file larger than this (1 MiB) is refused."""


class Mode(StrEnum):
    OBSERVE = "observe"
    """Record decisions only."""
    RECOMMEND = "recommend"
    """Plan migrations and show them; execute nothing."""
    ENFORCE = "enforce"
    """Execute planned migrations."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Section):
    url: SecretStr | None = None
    """SQLAlchemy URL; None means the embedded default SQLite file."""
    echo: bool = False


class DaemonConfig(_Section):
    mode: Mode = Mode.OBSERVE
    name: str | None = None
    """How this daemon names itself in leases and events; defaults to host:pid."""
    lease_seconds: Annotated[float, Field(ge=5, le=3600)] = 30
    tick_seconds: Annotated[float, Field(ge=1, le=3600)] = 10
    reconcile_seconds: Annotated[float, Field(ge=1, le=86400)] = 30
    """How often the leader decides, plans and drives migrations."""
    migration_steps_per_tick: Annotated[int, Field(ge=1, le=100)] = 20
    """Most steps one migration takes per reconcile pass (1 = one state per pass)."""
    workload_modes: dict[str, Mode] = Field(default_factory=dict)
    """Per-workload mode overrides, e.g. ``{"eu-chat-api" = "observe"}``."""
    kill_switch_file: Path | None = None
    """While this file exists no migration starts and those in flight are parked.
    Default: ``kill-switch`` next to the embedded SQLite file in the data directory."""


class LoggingConfig(_Section):
    level: str = "info"
    format: str = "auto"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("expected one of debug, info, warning, error, critical")
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        value = value.lower()
        if value not in {"auto", "json", "console"}:
            raise ValueError("expected one of auto, json, console")
        return value


class CatalogConfig(_Section):
    regions_file: Path | None = None
    jurisdictions_files: tuple[Path, ...] = ()


class StoreConfig(_Section):
    retention: Seconds = 400 * 86400.0
    """Price and capacity levels last seen longer ago than this are deleted (the newest
    level of every series is always kept). Carbon readings likewise, by their hour."""
    migration_retention: Seconds = 90 * 86400.0
    """Migrations finished (done, rolled back, failed) longer ago than this are deleted
    with their events; never an unfinished one, nor a workload's last one."""
    decision_retention: Seconds = 90 * 86400.0
    """Decisions decided longer ago than this are deleted; never a workload's latest."""


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    enabled: bool = True


class _BuiltAfterLoading(_Section):
    """A ``[SECTION.NAME]`` whose ``options`` are checked only when its thing is built,
    after the config was loaded: it keeps where its settings were made, for those errors."""

    _origin: Callable[[str], str] | None = PrivateAttr(default=None)

    @property
    def origin(self) -> Callable[[str], str] | None:
        """``Settings.origin_of`` of the settings it was loaded with: a dotted key's
        ``FILE:LINE`` or variable. None for settings made in code."""
        return self._origin


class SourceConfig(_BuiltAfterLoading):
    """One market-data source: ``[sources.NAME]``. ``options`` are the adapter's own."""

    kind: str
    enabled: bool = True
    interval: Seconds = 300.0
    """How often to poll."""
    jitter: Seconds = 30.0
    """Random delay added to each poll, so sources and replicas do not poll in step."""
    timeout: Seconds = 20.0
    """Per request."""
    stale_after: Seconds = 3600.0
    """Data older than this is stale: shown as such and never used as fresh."""
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in SOURCE_KINDS:
            raise ValueError(unknown_name_message("source kind", value, SOURCE_KINDS))
        return value

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than zero")
        return value


class ExecutorConfig(_Section):
    """Which executor runs the replicas (``[executor]``); ``options`` are its own."""

    kind: str = "dry-run"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from arbiter.executors import EXECUTORS

        if value not in EXECUTORS:
            raise ValueError(unknown_name_message("executor", value, EXECUTORS))
        return value


class InterruptionSourceConfig(_BuiltAfterLoading):
    """One interruption notice source: ``[interruptions.NAME]``. ``options`` are the
    source's own (see docs/interruptions.md)."""

    kind: str
    enabled: bool = True
    interval: Seconds = 5.0
    """How often to poll (AWS recommends 5 s for instance metadata)."""
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        from arbiter.interruptions import INTERRUPTION_SOURCES

        if value not in INTERRUPTION_SOURCES:
            raise ValueError(
                unknown_name_message("interruption source kind", value, INTERRUPTION_SOURCES)
            )
        return value

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than zero")
        return value


class PoliciesConfig(_Section):
    """Where the placement policies and the workloads are read from (files or
    directories; relative paths are taken from the working directory)."""

    paths: tuple[Path, ...] = (Path("policies"),)
    workloads: tuple[Path, ...] = (Path("workloads"),)


class Settings(_Section):
    database: DatabaseConfig = DatabaseConfig()
    daemon: DaemonConfig = DaemonConfig()
    logging: LoggingConfig = LoggingConfig()
    catalog: CatalogConfig = CatalogConfig()
    http: HttpConfig = HttpConfig()
    store: StoreConfig = StoreConfig()
    policies: PoliciesConfig = PoliciesConfig()
    executor: ExecutorConfig = ExecutorConfig()
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    """Market-data sources by name; empty means the embedded default (recorded data)."""
    interruptions: dict[str, InterruptionSourceConfig] = Field(default_factory=dict)
    """Interruption notice sources by name; empty means none."""

    _file: Path | None = PrivateAttr(default=None)
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def origin_of(self, key: str) -> str:
        """Where the setting ``key`` (dotted) came from, for an error found after loading
        (an executor checks its options when it is built): the variable that set it,
        else ``FILE:LINE`` of the config file (the line of the key, or of the nearest
        table holding it), else ``config`` (settings made in code)."""
        from arbiter.toml_lines import line_of

        if key in self._origins:
            return self._origins[key]
        line = None
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                line = line_of(self._file.read_text(encoding="utf-8"), key)
        if line is not None:
            return f"{self._file}:{line}"
        below = sorted(v for k, v in self._origins.items() if k.startswith(f"{key}."))
        return below[0] if below else str(self._file or "config")


class LoadedConfig:
    """Validated settings plus where they came from."""

    def __init__(self, settings: Settings, *, file: Path | None, origins: Mapping[str, str]):
        self.settings = settings
        self.file = file
        self.origins = dict(origins)


def default_config_paths() -> tuple[Path, ...]:
    from platformdirs import user_config_dir

    system = Path("/etc/arbiter/config.toml")
    try:
        return (Path(user_config_dir("arbiter")) / "config.toml", system)
    except (RuntimeError, KeyError):
        # no home directory (e.g. a systemd DynamicUser without HOME): system file only
        return (system,)


def find_config_file(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("ARBITER_CONFIG"):
        return Path(env["ARBITER_CONFIG"])
    for candidate in default_config_paths():
        if candidate.is_file():
            return candidate
    return None


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
        elif "__" in name:
            path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        else:
            known = ", ".join(sorted([*ENV_ALIASES, "ARBITER_<SECTION>__<KEY>"]))
            raise ConfigError(f"unknown variable; known: {known}", source=f"environment {name}")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        origins[".".join(path)] = f"environment {name}"
    return data, origins


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read, merge and validate the configuration. Raises ConfigError naming file and key."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    data: dict[str, Any] = {}
    if file is not None:
        data = _read_toml(file)
    file_label = str(file) if file else "defaults"
    overrides, origins = _env_overrides(env)
    merged = _merge(data, overrides)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        variable = _variable_behind(err["loc"], origins, data)
        source = variable or file_label
        got = err.get("input")
        shown = "" if _is_secret_key(key) or isinstance(got, dict) else f" (got {got!r})"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            if variable and len(err["loc"]) == 1:
                # The variable's name already says where; name the section it misspells.
                raise ConfigError(
                    f"unknown section {key!r}{_did_you_mean(err['loc'])}", source=variable
                ) from None
            message = f"unknown key{_did_you_mean(err['loc'])}"
            shown = ""
        raise ConfigError(f"{message}{shown}", source=source, key=key) from None
    from arbiter.logs import register_secrets

    register_secrets(configured_secrets(settings))
    settings._file, settings._origins = file, dict(origins)
    for built_later in (*settings.sources.values(), *settings.interruptions.values()):
        built_later._origin = settings.origin_of
    return LoadedConfig(settings, file=file, origins=origins)


def configured_secrets(settings: Settings) -> set[str]:
    """Every secret value in the settings: the database password, and what the options
    of sources, interruption sources and the executor hold under secret-looking keys."""
    found = secret_values(
        [
            {n: c.options for n, c in settings.sources.items()},
            {n: c.options for n, c in settings.interruptions.items()},
            settings.executor.options,
        ]
    )
    if settings.database.url is not None:
        found |= secret_values(settings.database.url.get_secret_value())
    return found


def _read_toml(file: Path) -> dict[str, Any]:
    """The config file's tables. A file that is not a regular file (a FIFO would block
    the read, a device never end), larger than :data:`MAX_CONFIG_BYTES`, not UTF-8 or
    nested too deeply for the parser is refused with a ConfigError naming it."""
    source = str(file)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError("config file not found", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=source) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError("not a regular file; expected a TOML file", source=source)
    with os.fdopen(fd, "rb") as handle:
        try:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", source=source) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file is larger than {MAX_CONFIG_BYTES} bytes; refused", source=source
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "expected a TOML file",
            source=source,
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    except RecursionError:
        raise ConfigError("not valid TOML: nested too deeply", source=source) from None


def _variable_behind(
    loc: tuple[Any, ...], origins: Mapping[str, str], file_data: Mapping[str, Any]
) -> str | None:
    """The environment variable an invalid setting came from, or None if it came from
    the file or the defaults.

    A variable may create a whole table (``ARBITER_DAEMN__MODE`` creates ``daemn``), so
    an error about a table the file does not have is the variable's under it.
    """
    key = ".".join(str(p) for p in loc)
    if key in origins:
        return origins[key]
    node: Any = file_data
    for part in loc:
        if not isinstance(node, Mapping) or str(part) not in node:
            break
        node = node[str(part)]
    else:
        return None
    return next((origins[k] for k in sorted(origins) if k.startswith(f"{key}.")), None)


def _is_secret_key(key: str) -> bool:
    return any(word in key for word in ("url", "password", "secret", "token", "key"))


_SECRET_NAMES = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")


def mask_secrets(data: Any) -> Any:
    """A copy of ``data`` with values under secret-looking keys replaced by ``***`` and
    passwords inside URLs masked, at any depth (source options are free-form)."""
    from arbiter.logs import mask_secrets_in_text

    if isinstance(data, Mapping):
        return {
            k: "***"
            if any(word in str(k).lower() for word in _SECRET_NAMES) and v is not None
            else mask_secrets(v)
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask_secrets(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return mask_secrets_in_text(data)
    return data


def secret_values(data: Any) -> set[str]:
    """The values :func:`mask_secrets` would hide: under secret-looking keys (at any
    depth) and passwords inside URLs — what must never appear in a message either."""
    from arbiter.store.db import parse_url

    found: set[str] = set()
    if isinstance(data, Mapping):
        for k, v in data.items():
            if any(word in str(k).lower() for word in _SECRET_NAMES) and v is not None:
                value = v.get_secret_value() if isinstance(v, SecretStr) else v
                found.update(secret_values(value) if not isinstance(value, str) else {value})
            else:
                found |= secret_values(v)
    elif isinstance(data, list | tuple):
        for v in data:
            found |= secret_values(v)
    elif isinstance(data, str) and "://" in data:
        parsed = parse_url(data)
        if parsed is not None and parsed.password:
            found.add(parsed.password)
    return {v for v in found if len(v) >= 6}  # shorter ones would mask ordinary words


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    import difflib

    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(model.model_fields)}"


DEFAULT_SOURCES: dict[str, dict[str, Any]] = {
    "replay": {"kind": "replay", "interval": "60s", "jitter": "5s", "stale_after": "10m"},
    # Annual factors: valid for a past year, so always shown as stale — a labelled
    # fallback, never mistaken for live grid data.
    "static-carbon": {"kind": "static-carbon", "interval": "24h", "jitter": "1m"},
}
"""The embedded default: recorded real prices and capacity, and static carbon factors."""


def is_embedded(settings: Settings) -> bool:
    """The embedded default: no market-data source configured (the recorded market)."""
    return not settings.sources


def default_kill_switch_file() -> Path | None:
    """``kill-switch`` in the data directory, next to the embedded SQLite default; None
    when there is no home or data directory to hold it (a daemon on PostgreSQL under a
    user without a home): then only ``daemon.kill_switch_file`` gives one."""
    from arbiter.errors import StoreError
    from arbiter.store.db import default_sqlite_path

    try:
        return default_sqlite_path().parent / "kill-switch"
    except StoreError:
        return None


def effective_settings(settings: Settings) -> Settings:
    """Settings with the embedded default filled in where nothing was configured.

    On the embedded default (recorded market, no sources configured) a daemon with no
    ``[executor]`` kind runs the **local** executor — real processes on loopback behind
    nginx — and, unless ``daemon.mode`` is set, in **enforce** mode, so a new user sees
    real migrations. With real sources configured the defaults are the safe ones: the
    dry-run executor and observe mode.
    """
    embedded = is_embedded(settings)
    updates: dict[str, Any] = {}
    if "kind" not in settings.executor.model_fields_set:
        kind = "local" if embedded else "dry-run"
        updates["executor"] = settings.executor.model_copy(update={"kind": kind})
    daemon: dict[str, Any] = {}
    if embedded and "mode" not in settings.daemon.model_fields_set:
        daemon["mode"] = Mode.ENFORCE
    if settings.daemon.kill_switch_file is None:
        kill_switch = default_kill_switch_file()
        if kill_switch is not None:
            daemon["kill_switch_file"] = kill_switch
    if daemon:
        updates["daemon"] = settings.daemon.model_copy(update=daemon)
    return settings.model_copy(update=updates) if updates else settings


def effective_source_configs(configured: Mapping[str, SourceConfig]) -> dict[str, SourceConfig]:
    if configured:
        return dict(configured)
    return {name: SourceConfig.model_validate(spec) for name, spec in DEFAULT_SOURCES.items()}
