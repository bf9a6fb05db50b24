"""The source registry (providers/registry.py): a source's options are checked when it
is built, after the config was loaded, and an error about one names where it was set
— the config file and line, or the variable — like every other config error (and like
the executor's, tests/executors/test_registry.py), not just ``sources.NAME.options``."""

from __future__ import annotations

from pathlib import Path

import pytest

from arbiter.config import SourceConfig, effective_source_configs, load_config
from arbiter.errors import ConfigError
from arbiter.polling import build_sources

REPLAY = """\
[daemon]
mode = "observe"

[sources.replay]
kind = "replay"

[sources.replay.options]
speed = 60
end = "2024-01-01T00:00:00Z"
"""


def error_building(config: str, tmp_path: Path, env: dict[str, str] | None = None) -> ConfigError:
    path = tmp_path / "config.toml"
    path.write_text(config)
    settings = load_config(path, env=env or {}).settings
    with pytest.raises(ConfigError) as caught:
        build_sources(effective_source_configs(settings.sources))
    return caught.value


def test_a_bad_option_names_the_config_file_and_the_line_it_is_on(tmp_path: Path) -> None:
    error = error_building(REPLAY, tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:9",
        "sources.replay.options.end",
    )
    assert str(error) == (
        f"{tmp_path / 'config.toml'}:9: sources.replay.options.end: must be after start"
    )


def test_an_unknown_option_names_its_line(tmp_path: Path) -> None:
    error = error_building(REPLAY.replace("speed = 60", "sped = 60"), tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:8",
        "sources.replay.options.sped",
    )
    assert error.message.startswith("unknown option; known: ")


def test_an_option_set_by_a_variable_names_the_variable(tmp_path: Path) -> None:
    config = REPLAY.replace('end = "2024-01-01T00:00:00Z"\n', "")
    error = error_building(config, tmp_path, env={"ARBITER_SOURCES__REPLAY__OPTIONS__SPEED": "0"})
    assert (error.source, error.key) == (
        "environment ARBITER_SOURCES__REPLAY__OPTIONS__SPEED",
        "sources.replay.options.speed",
    )


def test_a_file_an_option_names_that_cannot_be_read_names_the_options_line(
    tmp_path: Path,
) -> None:
    config = (
        '[sources.grid]\nkind = "static-carbon"\n'
        f'options = {{ file = "{tmp_path / "missing.csv"}" }}\n'
    )
    error = error_building(config, tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:3",
        "sources.grid.options.file",
    )
    assert "cannot read" in error.message


def test_an_unknown_aws_profile_names_the_line_of_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    config = (
        '[sources.aws]\nkind = "aws"\n\n[sources.aws.options]\nregions = ["us-east-1"]\n'
        'profile = "nobody"\n'
    )
    error = error_building(config, tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:6",
        "sources.aws.options.profile",
    )


def test_sources_configured_in_code_keep_naming_the_options_table() -> None:
    with pytest.raises(ConfigError) as caught:
        build_sources({"replay": SourceConfig(kind="replay", options={"sped": 60})})
    assert (caught.value.source, caught.value.key) == ("sources.replay.options", "sped")


@pytest.mark.parametrize("command", [["poll", "--once"], ["run"]])
def test_arbiter_names_the_config_file_and_line_of_a_bad_source_option(
    tmp_path: Path, command: list[str]
) -> None:
    from click.testing import CliRunner

    from arbiter.cli.main import cli

    config = tmp_path / "config.toml"
    config.write_text(REPLAY)
    result = CliRunner().invoke(
        cli,
        ["--config", str(config), "--database-url", f"sqlite:///{tmp_path / 'a.db'}", *command],
        env={"ARBITER_DAEMON__NAME": "test:1", "ARBITER_HTTP__ENABLED": "false"},
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"arbiter: error: {config}:9: sources.replay.options.end: must be after start"
    )
    assert "Traceback" not in result.output
