from __future__ import annotations

import io
import json

from arbiter import logs


def test_lines_are_json_with_component_and_context_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    logs.configure("info", "auto", stream=stream)
    log = logs.get_logger("migrator", workload="chat-api", migration="m-1")
    log.info("shifting traffic", weight=50)
    line = json.loads(stream.getvalue().strip())
    assert line["component"] == "migrator"
    assert line["workload"] == "chat-api"
    assert line["migration"] == "m-1"
    assert line["event"] == "shifting traffic"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_secrets_never_reach_the_log() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    logs.get_logger("store").info(
        "connecting",
        url="postgresql://arbiter:hunter2@127.0.0.1:5432/arbiter",
        api_token="abc123",
        password="hunter2",
    )
    out = stream.getvalue()
    assert "hunter2" not in out and "abc123" not in out
    line = json.loads(out)
    assert line["url"] == "postgresql://arbiter:***@127.0.0.1:5432/arbiter"


def test_the_level_filters() -> None:
    stream = io.StringIO()
    logs.configure("warning", "json", stream=stream)
    logs.get_logger("x").info("quiet")
    logs.get_logger("x").warning("loud")
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["loud"]


def test_console_format_is_readable() -> None:
    stream = io.StringIO()
    logs.configure("info", "console", stream=stream)
    logs.get_logger("daemon").info("started", mode="observe")
    out = stream.getvalue()
    assert "started" in out and "component=daemon" in out and not out.startswith("{")
