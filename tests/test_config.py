from __future__ import annotations

from pathlib import Path

import pytest

from arbiter.config import Mode, load_config
from arbiter.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arbiter.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path: Path) -> None:
    loaded = load_config(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert loaded.settings.database.url is None
    assert loaded.settings.daemon.mode is Mode.OBSERVE
    assert loaded.settings.http.host == "127.0.0.1"


def test_the_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nmode = "recommend"\n[database]\nurl = "sqlite:///x.db"\n')
    loaded = load_config(path, env={})
    assert loaded.settings.daemon.mode is Mode.RECOMMEND
    assert loaded.settings.database.url is not None
    assert loaded.settings.database.url.get_secret_value() == "sqlite:///x.db"


def test_arbiter_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nmode = "enforce"\n')
    loaded = load_config(env={"ARBITER_CONFIG": str(path)})
    assert loaded.file == path
    assert loaded.settings.daemon.mode is Mode.ENFORCE


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nmode = "recommend"\n[database]\nurl = "sqlite:///a.db"\n')
    loaded = load_config(
        path,
        env={
            "ARBITER_DATABASE_URL": "postgresql://u:p@127.0.0.1/arbiter",
            "ARBITER_DAEMON__MODE": "enforce",
            "ARBITER_HTTP__PORT": "9999",
        },
    )
    s = loaded.settings
    assert s.database.url is not None
    assert s.database.url.get_secret_value() == "postgresql://u:p@127.0.0.1/arbiter"
    assert s.daemon.mode is Mode.ENFORCE
    assert s.http.port == 9999
    assert loaded.origins["daemon.mode"] == "environment ARBITER_DAEMON__MODE"


def test_an_unknown_key_names_file_and_key_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nmdoe = 'enforce'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.source == str(path)
    assert err.value.key == "daemon.mdoe"
    assert "did you mean 'mode'?" in str(err.value)


def test_an_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[deamon]\nmode = 'enforce'\n")
    with pytest.raises(ConfigError, match=r"deamon: unknown key; did you mean 'daemon'"):
        load_config(path, env={})


def test_an_unknown_section_in_a_variable_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"ARBITER_DAEMN__MODE": "enforce", "XDG_CONFIG_HOME": str(tmp_path)})
    assert str(err.value) == (
        "environment ARBITER_DAEMN__MODE: unknown section 'daemn'; did you mean 'daemon'?"
    )
    assert err.value.source == "environment ARBITER_DAEMN__MODE"


def test_an_unknown_section_in_a_variable_names_the_variable_not_the_file(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[daemon]\nmode = 'recommend'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"ARBITER_DAEMN__MODE": "enforce"})
    assert err.value.source == "environment ARBITER_DAEMN__MODE"
    assert str(path) not in str(err.value)


def test_an_unknown_section_with_no_close_match_lists_the_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"ARBITER_ZZZ__MODE": "enforce", "XDG_CONFIG_HOME": str(tmp_path)})
    assert str(err.value).startswith(
        "environment ARBITER_ZZZ__MODE: unknown section 'zzz'; known: database, daemon,"
    )


def test_an_unknown_section_in_both_file_and_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemn]\nmode = 'recommend'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"ARBITER_DAEMN__MODE": "enforce"})
    assert err.value.source == str(path)
    assert err.value.key == "daemn"


def test_a_variable_that_nests_below_a_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"ARBITER_DAEMON__MODE__X": "enforce", "XDG_CONFIG_HOME": str(tmp_path)})
    assert err.value.source == "environment ARBITER_DAEMON__MODE__X"
    assert err.value.key == "daemon.mode"


def test_a_wrong_value_names_the_variable_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"ARBITER_MODE": "yolo", "XDG_CONFIG_HOME": str(tmp_path)})
    assert err.value.source == "environment ARBITER_MODE"
    assert err.value.key == "daemon.mode"
    assert "'yolo'" in str(err.value)


def test_an_unknown_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ARBITER_DATABSE_URL: unknown variable"):
        load_config(env={"ARBITER_DATABSE_URL": "x", "XDG_CONFIG_HOME": str(tmp_path)})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_config(path, env={})


def test_a_missing_file_named_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_an_invalid_database_url_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nurl = 4817293\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.key == "database.url"
    # the message names the file (whose temporary path may hold any digits), not the value
    assert "4817293" not in str(err.value).replace(str(path), "")


def test_the_database_url_is_a_secret(tmp_path: Path) -> None:
    loaded = load_config(
        env={
            "ARBITER_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1/db",
            "XDG_CONFIG_HOME": str(tmp_path),
        }
    )
    assert "hunter2" not in repr(loaded.settings)
    assert "hunter2" not in str(loaded.settings.model_dump())


def test_sources_take_durations_in_words(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[sources.aws-us]\nkind = "aws"\ninterval = "5m"\njitter = "30s"\n'
        'stale_after = "1h30m"\noptions = {regions = ["us-east-1"]}\n',
    )
    source = load_config(path, env={}).settings.sources["aws-us"]
    assert (source.interval, source.jitter, source.stale_after) == (300, 30, 5400)
    assert source.options == {"regions": ["us-east-1"]}


def test_an_unknown_source_kind_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[sources.x]\nkind = "awz"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.key == "sources.x.kind"
    assert "did you mean 'aws'?" in str(err.value)


def test_a_bad_duration_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[sources.x]\nkind = "aws"\ninterval = "five minutes"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.key == "sources.x.interval"
    assert "like '30s'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "key", "got"),
    [
        ('[sources.x]\nkind = "aws"\ninterval = ["5m"]\n', "sources.x.interval", "list"),
        ('[sources.x]\nkind = "aws"\njitter = {s = 5}\n', "sources.x.jitter", "table"),
        (
            '[interruptions.spot]\nkind = "aws-imds"\ninterval = {s = 5}\n',
            "interruptions.spot.interval",
            "table",
        ),
    ],
)
def test_a_duration_given_a_list_or_table_is_an_error_naming_file_key_and_type(
    tmp_path: Path, text: str, key: str, got: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert (err.value.source, err.value.key) == (str(path), key)
    assert "expected a duration like '30s', '5m', '1h30m', got" in str(err.value)
    assert got in str(err.value)
