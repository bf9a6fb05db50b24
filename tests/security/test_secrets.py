"""Secrets never leave the process: not in logs, not in the CLI's output, not in the
store, not in error messages.

The secrets: a database password (in the URL of a database on the test PostgreSQL
server, whose trust authentication ignores it), an Electricity Maps token and a password
inside its base URL, a WattTime password and a GCP API key in ``[sources.X.options]``.
The carbon APIs are a local server that refuses every request — and, like some real
APIs, quotes the credential it was sent back in its error body.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from arbiter import logs
from arbiter.catalog import load_catalog
from arbiter.config import SourceConfig, load_config
from arbiter.polling import ConfiguredSource, Poller, RetryPolicy
from arbiter.ports import FakeClock
from arbiter.store.db import upgrade
from arbiter.store.repositories import Store
from providers.registry import build_source
from tests.reliability.site import ROOT, WEST4, Site, running, wait_for

DB_PASSWORD = "db-pa55-Zq8x"
EM_TOKEN = "em-tok3n-Wv41"
EM_URL_PASSWORD = "em-urlpw-Kd92"
WT_PASSWORD = "wt-pa55-Hj27"
GCP_KEY = "gcp-k3y-Rt55"
PROXY = f"https://proxy-user:{EM_URL_PASSWORD}@billing.example.com"
"""A URL with a password in a source's options (never contacted: the source is off)."""
SECRETS = (DB_PASSWORD, EM_TOKEN, EM_URL_PASSWORD, WT_PASSWORD, GCP_KEY)


def assert_no_secret(text: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} shows {leaked}"


class Echo(BaseHTTPRequestHandler):
    """Refuses everything and quotes the credentials it got: 401 for a token or
    password, 400 ("bad request") otherwise."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        sent = [self.headers.get(h) for h in ("auth-token", "Authorization", "X-Goog-Api-Key")]
        quoted = ", ".join(s for s in sent if s)
        status = 401 if quoted else 400
        body = json.dumps({"message": f"invalid credentials: {quoted}", "error": quoted}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def source_options(port: int) -> str:
    return f"""
[sources.em]
kind = "electricitymaps"
interval = "1s"
jitter = "0s"

[sources.em.options]
token = "{EM_TOKEN}"
base_url = "http://127.0.0.1:{port}/v3"

[sources.wt]
kind = "watttime"
interval = "1s"
jitter = "0s"

[sources.wt.options]
username = "someone"
password = "{WT_PASSWORD}"
regions = {{ NL = "NL", BE = "BE" }}
base_url = "http://127.0.0.1:{port}/v3"
"""


@pytest.fixture
def rendered() -> Iterator[io.StringIO]:
    """The real log pipeline (redaction included), rendered as JSON into a buffer."""
    saved = structlog.get_config()
    handlers, level = logging.root.handlers[:], logging.root.level
    out = io.StringIO()
    logs.configure("debug", "json", out)
    try:
        yield out
    finally:
        structlog.configure(**saved)
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


def test_a_credential_a_server_echoes_back_is_masked_in_the_error_the_store_and_the_log(
    store: Store, echo: int, rendered: io.StringIO, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(source_options(echo))
    settings = load_config(config, env={}).settings
    sources = {
        name: ConfiguredSource(
            name, conf, build_source(conf.kind, name, conf.options, timeout=conf.timeout)
        )
        for name, conf in settings.sources.items()
    }
    poller = Poller(
        store,
        sources,
        load_catalog(),
        FakeClock(datetime(2025, 6, 2, tzinfo=UTC)),
        retry=RetryPolicy(attempts=1),
    )
    results = [poller.poll(name) for name in sources]
    assert [r.ok for r in results] == [False, False]
    assert any("credentials refused" in (r.error or "") for r in results)
    assert_no_secret(repr(results), "the poll result")
    assert_no_secret(repr(store.sources.all()), "the source status in the store")
    assert "invalid credentials" in rendered.getvalue()
    assert_no_secret(rendered.getvalue(), "the log")


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_daemon_with_secrets_configured_shows_none_in_its_log_the_cli_or_the_store(
    tmp_path: Path, postgres_server: Any, echo: int
) -> None:
    url = postgres_server.new_database()
    upgrade(url)
    with_password = url.replace(
        "postgresql+psycopg://arbiter@", f"postgresql://arbiter:{DB_PASSWORD}@"
    )
    site = Site(tmp_path, with_password)
    gcp = f'[sources.gcp.options]\napi_key = "{GCP_KEY}"\nbilling_endpoint = "{PROXY}"\n'
    site.write(extra=source_options(echo) + '[sources.gcp]\nkind = "gcp"\nenabled = false\n' + gcp)
    try:
        with running(site):
            wait_for(lambda: site.placements() == {WEST4: 2}, 60, "the first placement")

            def failed(name: str) -> bool:
                rows = site.try_query(
                    f"SELECT consecutive_failures FROM source_status WHERE source = '{name}'"
                )
                return bool(rows) and rows[0][0] >= 2

            wait_for(lambda: failed("em") and failed("wt"), 40, "the carbon sources to fail")
            env = site.env()
            outputs = {}
            for command in (
                ["config", "show"],
                ["status", "-o", "json"],
                ["sources", "-o", "json"],
                ["decisions", "-o", "json"],
                ["migrations", "-o", "json"],
                ["workloads", "-o", "json"],
                ["snapshot", "export"],
            ):
                result = subprocess.run(
                    [sys.executable, "-m", "arbiter", *command],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=ROOT,
                    check=False,
                )
                assert result.returncode == 0, (command, result.stderr)
                outputs[" ".join(command)] = (result.stdout, result.stderr)
        for command, (out, err) in outputs.items():
            assert_no_secret(out + err, f"`arbiter {command}`")
        shown = json.loads(outputs["config show"][0])
        assert shown["settings"]["sources"]["em"]["options"]["token"] == "***"
        assert "arbiter:***@" in shown["settings"]["database"]["url"]
        sources = json.loads(outputs["sources -o json"][0])
        em = next(s for s in sources if s["source"] == "em")
        assert "credentials refused" in em["last_error"] and "***" in em["last_error"]
        log = site.log.read_text()
        assert "credentials refused" in log
        assert_no_secret(log, "the daemon's log")
        dump = "\n".join(
            repr(site.query(f'SELECT * FROM "{table}"'))
            for (table,) in site.query(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        )
        assert site.query("SELECT count(*) FROM decisions")[0][0] > 0
        assert_no_secret(dump, "the database (decisions, source status, events, ...)")
    finally:
        postgres_server.drop_database(url)


def _user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env.update(
        {
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "ARBITER_HTTP__ENABLED": "false",
            "ARBITER_EXECUTOR__KIND": "dry-run",
        }
    )
    return env


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["status"],
        ["status", "-o", "json"],
        ["poll", "--once"],
        ["db", "upgrade"],
        ["explain", "chat"],
        ["snapshot", "export"],
    ],
)
@pytest.mark.parametrize("given", ["flag", "environment"])
def test_an_unreachable_database_with_a_password_fails_in_one_line_without_it(
    tmp_path: Path, command: list[str], given: str
) -> None:
    url = f"postgresql://arbiter:{DB_PASSWORD}@127.0.0.1:1/arbiter"
    env = _user_env(tmp_path)
    args = [sys.executable, "-m", "arbiter"]
    if given == "flag":
        args += ["--database-url", url]
    else:
        env["ARBITER_DATABASE_URL"] = url
    result = subprocess.run(
        [*args, *command], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "database unreachable" in result.stderr or "error" in result.stderr
    assert_no_secret(result.stdout + result.stderr, f"`arbiter {' '.join(command)}`")


def test_config_show_masks_every_kind_of_secret(tmp_path: Path, echo: int) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "postgresql://arbiter:{DB_PASSWORD}@127.0.0.1/arbiter"\n'
        + source_options(echo)
        + f'\n[sources.gcp]\nkind = "gcp"\n[sources.gcp.options]\nproject = "p"\n'
        f'api_key = "{GCP_KEY}"\nbilling_endpoint = "{PROXY}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "arbiter", "--config", str(config), "config", "show"],
        env=_user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr, "`arbiter config show`")
    options = json.loads(result.stdout)["settings"]["sources"]
    assert options["gcp"]["options"]["api_key"] == "***"
    assert options["wt"]["options"]["password"] == "***"
    assert options["gcp"]["options"]["billing_endpoint"] == (
        "https://proxy-user:***@billing.example.com"
    )


def test_a_credential_a_server_echoes_back_encoded_is_not_shown_either(
    tmp_path: Path, echo: int
) -> None:
    import base64

    from arbiter.store.db import make_engine

    upgrade(f"sqlite:///{tmp_path / 'a.db'}")
    store = Store(make_engine(f"sqlite:///{tmp_path / 'a.db'}"))

    name = "em"
    options = {"token": EM_TOKEN, "base_url": f"http://u:{EM_URL_PASSWORD}@127.0.0.1:{echo}/v3"}
    conf = SourceConfig(kind="electricitymaps", options=options)
    poller = Poller(
        store,
        {name: ConfiguredSource(name, conf, build_source(conf.kind, name, options, timeout=5))},
        load_catalog(),
        FakeClock(datetime(2025, 6, 2, tzinfo=UTC)),
        retry=RetryPolicy(attempts=1),
    )
    result = poller.poll(name)
    encoded = base64.b64encode(f"u:{EM_URL_PASSWORD}".encode()).decode()
    assert not result.ok and encoded not in (result.error or "")
