"""The executor registry (arbiter/executors/__init__.py): an executor's options are
checked when it is built, after the config was loaded, and an error about one names
where it was set — the config file and line, or the variable — like every other
config error, not just ``config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from arbiter.config import Settings, load_config
from arbiter.errors import ConfigError
from arbiter.executors import make_executor
from arbiter.ports import FakeClock
from tests.executors.contract import START

LOCAL = """\
[daemon]
mode = "observe"

[executor]
kind = "local"

[executor.options]
warmup_seconds = 1
listen = "0.0.0.0:8080"
"""


def build(settings: Settings) -> None:
    conf = settings.executor
    make_executor(conf.kind, FakeClock(START), conf.options, origin=settings.origin_of)


def error_building(config: str, tmp_path: Path, env: dict[str, str] | None = None) -> ConfigError:
    path = tmp_path / "config.toml"
    path.write_text(config)
    settings = load_config(path, env=env or {}).settings
    with pytest.raises(ConfigError) as caught:
        build(settings)
    return caught.value


def test_a_bad_option_names_the_config_file_and_the_line_it_is_on(tmp_path: Path) -> None:
    error = error_building(LOCAL, tmp_path)
    assert (error.source, error.key) == (f"{tmp_path / 'config.toml'}:9", "executor.options.listen")
    assert str(error) == (
        f"{tmp_path / 'config.toml'}:9: executor.options.listen: "
        "the proxy binds 127.0.0.1 only, got '0.0.0.0'"
    )


def test_an_option_set_by_a_variable_names_the_variable(tmp_path: Path) -> None:
    config = LOCAL.replace('listen = "0.0.0.0:8080"\n', "")
    error = error_building(
        config, tmp_path, env={"ARBITER_EXECUTOR__OPTIONS__LISTEN": "0.0.0.0:8080"}
    )
    assert error.source == "environment ARBITER_EXECUTOR__OPTIONS__LISTEN"


def test_an_option_missing_from_a_table_names_the_tables_line(tmp_path: Path) -> None:
    config = '[executor]\nkind = "cloud"\n\n[executor.options]\ntimeout = "30s"\n'
    error = error_building(config, tmp_path)
    assert error.source == f"{tmp_path / 'config.toml'}:4"
    assert "at least one of aws, gcp, azure" in str(error)


def test_an_unknown_option_of_a_nested_table_names_its_line(tmp_path: Path) -> None:
    config = (
        '[executor]\nkind = "cloud"\n\n'
        '[executor.options.gcp]\nproject = "arbiter-test"\nimage = "projects/p/global/images/i"\n'
        'colour = "blue"\n'
    )
    error = error_building(config, tmp_path)
    assert (error.source, error.key) == (
        f"{tmp_path / 'config.toml'}:7",
        "executor.options.gcp.colour",
    )


def test_options_given_to_the_dry_run_executor_name_the_options_table(tmp_path: Path) -> None:
    error = error_building('[executor]\nkind = "dry-run"\noptions = { a = 1 }\n', tmp_path)
    assert (error.source, error.key) == (f"{tmp_path / 'config.toml'}:3", "executor.options")


def test_settings_made_in_code_say_config() -> None:
    settings = Settings.model_validate({"executor": {"kind": "dry-run", "options": {"a": 1}}})
    with pytest.raises(ConfigError) as caught:
        build(settings)
    assert caught.value.source == "config"


def test_arbiter_run_names_the_config_file_and_line_of_a_bad_option(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from arbiter.cli.main import cli

    config = tmp_path / "config.toml"
    config.write_text(LOCAL)
    result = CliRunner().invoke(
        cli,
        ["--config", str(config), "--database-url", f"sqlite:///{tmp_path / 'a.db'}", "run"],
        env={"ARBITER_DAEMON__NAME": "test:1", "ARBITER_HTTP__ENABLED": "false"},
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"arbiter: error: {config}:9: executor.options.listen: "
        "the proxy binds 127.0.0.1 only, got '0.0.0.0'"
    )
    assert "Traceback" not in result.output
