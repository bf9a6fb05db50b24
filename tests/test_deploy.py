"""deploy/: the systemd unit, the container image, the Kubernetes manifests, the Grafana
dashboard and alert rules, the IAM policies and the PostgreSQL roles, each checked
against the code it deploys (metric names, provider calls, config keys, the schema).

What is *not* checked here, because this machine and CI have no engine for it: building
the image, and validating the Kubernetes manifests against an API server's schema.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from arbiter.config import HttpConfig, load_config
from arbiter.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "arbiter.service"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "arbiter-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "arbiter-alerts.yaml"
IAM = DEPLOY / "iam"
ROLES_SQL = DEPLOY / "postgres" / "roles.sql"
ARBITER = Path(sys.executable).parent / "arbiter"


# -- systemd -----------------------------------------------------------------------


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment of a unit file, in order."""
    entries = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(section: str, key: str) -> list[str]:
    return [v for s, k, v in unit_entries(UNIT.read_text()) if s == section and k == key]


def unit_value(section: str, key: str) -> str:
    values = unit_values(section, key)
    assert len(values) == 1, f"{key}= appears {len(values)} times in [{section}]"
    return values[0]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that ExecStart's binary exists: point it at this checkout's arbiter.
    text = UNIT.read_text()
    assert "ExecStart=/opt/arbiter/.venv/bin/arbiter run" in text
    unit = tmp_path / "arbiter.service"
    unit.write_text(text.replace("/opt/arbiter/.venv/bin/arbiter", str(ARBITER)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    # verify exits 0 on unknown keys and unparseable values: it only warns. Any line
    # about our unit is a mistake.
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if "arbiter.service" in line] == []


def test_the_unit_is_a_notify_service_with_a_watchdog_that_restarts_on_failure() -> None:
    assert unit_value("Service", "Type") == "notify"
    assert unit_value("Service", "NotifyAccess") == "main"
    assert int(unit_value("Service", "WatchdogSec")) >= 20
    assert unit_value("Service", "Restart") == "on-failure"
    assert unit_value("Service", "ExecReload").endswith("kill -HUP $MAINPID")
    assert unit_value("Service", "KillSignal") == "SIGTERM"
    assert int(unit_value("Service", "TimeoutStopSec")) >= 60


def test_the_unit_runs_a_command_the_cli_has() -> None:
    from arbiter.cli.main import cli

    command = unit_value("Service", "ExecStart").split()
    assert command[0] == "/opt/arbiter/.venv/bin/arbiter"
    assert command[1] in cli.commands


def test_the_unit_is_sandboxed() -> None:
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "arbiter",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    assert {key: unit_value("Service", key) for key in expected} == expected


def test_the_units_state_directory_holds_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from arbiter.store.db import default_sqlite_path

    environment = dict(v.split("=", 1) for v in unit_values("Service", "Environment"))
    assert environment["XDG_DATA_HOME"] == "%S"  # /var/lib for a system unit
    monkeypatch.setenv("XDG_DATA_HOME", "/var/lib")
    assert (
        default_sqlite_path()
        == Path("/var/lib") / unit_value("Service", "StateDirectory") / "arbiter.db"
    )


# -- container image -----------------------------------------------------------------


def containerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in containerfile_instructions() if word == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for item in re.findall(r"(\w+)=(\S+)", rest):
            env[item[0]] = item[1]
    return env


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    (user,) = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0


def test_the_image_entrypoint_is_arbiter_run_in_exec_form() -> None:
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    assert json.loads(entrypoint) + json.loads(cmd) == ["arbiter", "run"]


def test_the_image_installs_the_locked_dependencies_and_the_migrations() -> None:
    copied = " ".join(instruction("COPY"))
    assert "requirements.lock" in copied and "migrations" in copied
    assert any("-c requirements.lock" in run for run in instruction("RUN"))
    for rest in instruction("COPY"):
        *sources, _destination = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_images_environment_is_valid_configuration() -> None:
    env = image_env()
    settings = load_config(env={k: v for k, v in env.items() if k.startswith("ARBITER_")}).settings
    assert settings.http.port == int(instruction("EXPOSE")[0])
    assert settings.http.port == HttpConfig().port


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[str, int]]:
    from arbiter.http_api import Endpoint
    from arbiter.store.db import make_engine, upgrade
    from arbiter.store.repositories import Store

    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    upgrade(url)
    engine = make_engine(url)
    server = Endpoint(
        "127.0.0.1",
        0,
        Store(engine),
        lambda: {"leader": True, "mode": "observe", "name": "test:1"},
        lambda: (True, []),
    )
    server.start()
    yield server.address
    server.stop()
    engine.dispose()


def healthcheck_command() -> list[str]:
    (healthcheck,) = instruction("HEALTHCHECK")
    command: list[str] = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "/opt/arbiter/.venv/bin/python"
    return [sys.executable, *command[1:]]


def test_the_image_health_check_passes_against_a_serving_daemon(
    endpoint: tuple[str, int],
) -> None:
    _host, port = endpoint
    env = {**os.environ, "ARBITER_HTTP__PORT": str(port)}
    result = subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_image_health_check_fails_when_nothing_serves() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the check runs
    env = {**os.environ, "ARBITER_HTTP__PORT": str(port)}
    result = subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=30)
    assert result.returncode != 0


# -- Kubernetes ------------------------------------------------------------------------


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(KUBERNETES.glob("*.yaml"))
    }


def manifest(kind: str, name: str = "arbiter") -> dict[str, Any]:
    found = [
        doc
        for docs in manifests().values()
        for doc in docs
        if doc["kind"] == kind and doc.get("metadata", {}).get("name") == name
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(kind: str = "Deployment", name: str = "arbiter") -> dict[str, Any]:
    (first,) = manifest(kind, name)["spec"]["template"]["spec"]["containers"]
    return first  # type: ignore[no-any-return]


def test_every_kubernetes_manifest_parses_and_names_its_kind() -> None:
    found = manifests()
    assert found, "no manifests in deploy/kubernetes"
    for filename, docs in found.items():
        assert docs, f"{filename} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), filename
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], filename
                if doc["kind"] != "Namespace":
                    assert doc["metadata"]["namespace"] == "arbiter", filename


def test_the_kustomization_lists_every_manifest_but_the_template_and_the_job() -> None:
    kustomization = manifests()["kustomization.yaml"][0]
    listed = set(kustomization["resources"])
    on_disk = set(manifests()) - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml", "job-db-upgrade.yaml"}


def test_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; `kubectl kustomize` not tried")
    # A render only (offline): it proves the kustomization is consistent, not that the
    # API server would accept the objects; that needs a cluster or kubeconform.
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout))
    assert "Deployment" in kinds and "PodDisruptionBudget" in kinds


def test_the_deployment_runs_two_replicas_of_arbiter_run() -> None:
    deployment = manifest("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert container()["args"] == ["run"]


def test_the_deployment_probes_healthz_and_readyz_on_the_metrics_port() -> None:
    main = container()
    (port,) = main["ports"]
    assert port["containerPort"] == HttpConfig().port
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_pods_run_as_the_images_user_with_a_read_only_root() -> None:
    uid, _, gid = instruction("USER")[0].partition(":")
    for kind, name in (("Deployment", "arbiter"), ("Job", "arbiter-db-upgrade")):
        pod = manifest(kind, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container(kind, name)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]


def test_the_pods_get_no_service_link_variables() -> None:
    # arbiter refuses unknown ARBITER_* variables; a Service named arbiter would inject
    # ARBITER_SERVICE_HOST and friends into every pod of the namespace.
    for kind, name in (("Deployment", "arbiter"), ("Job", "arbiter-db-upgrade")):
        assert manifest(kind, name)["spec"]["template"]["spec"]["enableServiceLinks"] is False
    with pytest.raises(ConfigError, match="ARBITER_SERVICE_HOST"):
        load_config(env={"ARBITER_SERVICE_HOST": "10.0.0.1"})


def test_the_stop_grace_period_outlasts_the_daemons_graceful_stop() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > int(unit_value("Service", "TimeoutStopSec"))


def test_the_config_map_and_the_deployments_variables_are_valid_configuration(
    tmp_path: Path,
) -> None:
    from arbiter.polling import build_sources

    config = tmp_path / "config.toml"
    config.write_text(manifest("ConfigMap", "arbiter-config")["data"]["config.toml"])
    env = {item["name"]: "dummy-value" for item in container()["env"]}
    env["ARBITER_DATABASE_URL"] = "postgresql://arbiter_daemon@127.0.0.1/arbiter"
    assert all(name.startswith("ARBITER_") for name in env)
    settings = load_config(config, env=env).settings
    sources = build_sources(settings.sources)  # every adapter validates its options
    assert {"aws", "gcp", "azure"} <= set(sources)
    for source in sources.values():
        close = getattr(source.adapter, "close", None)
        if close is not None:
            close()


def config_map_mounts() -> dict[str, dict[str, Any]]:
    """ConfigMap name → its volume mount in the arbiter container."""
    volumes = {v["name"]: v for v in manifest("Deployment")["spec"]["template"]["spec"]["volumes"]}
    mounts = {}
    for mount in container()["volumeMounts"]:
        assert mount["name"] in volumes, mount["name"]
        config_map = volumes[mount["name"]].get("configMap")
        if config_map:
            mounts[config_map["name"]] = mount
    return mounts


OUT_OF_BAND_CONFIG_MAPS = {"arbiter-policies": "policies/", "arbiter-workloads": "workloads/"}
"""ConfigMaps the operator creates from their own files (not in the kustomization, so
that ``kubectl apply -k`` never replaces them), with the directory they come from."""


def test_the_config_is_mounted_where_arbiter_looks_for_it() -> None:
    from arbiter.config import default_config_paths

    mounts = config_map_mounts()
    assert mounts["arbiter-config"]["mountPath"] == "/etc/arbiter/config.toml"
    assert Path("/etc/arbiter/config.toml") in default_config_paths()
    for name in set(mounts) - set(OUT_OF_BAND_CONFIG_MAPS):
        manifest("ConfigMap", name)


def test_the_policy_and_workload_config_maps_are_created_by_documented_commands() -> None:
    assert set(OUT_OF_BAND_CONFIG_MAPS) <= set(config_map_mounts())
    shipped = {
        doc["metadata"]["name"]
        for docs in manifests().values()
        for doc in docs
        if doc["kind"] == "ConfigMap"
    }
    assert not shipped & set(OUT_OF_BAND_CONFIG_MAPS)  # apply -k would empty them
    for page in (KUBERNETES / "README.md", ROOT / "docs" / "deploy.md"):
        text = " ".join(page.read_text().replace("\\\n", " ").split())
        for name, directory in OUT_OF_BAND_CONFIG_MAPS.items():
            command = f"kubectl -n arbiter create configmap {name} --from-file={directory}"
            assert command in text, f"{page.name}: {command}"


def deployed_settings(tmp_path: Path) -> Any:
    config = tmp_path / "config.toml"
    config.write_text(manifest("ConfigMap", "arbiter-config")["data"]["config.toml"])
    env = {item["name"]: "dummy-value" for item in container()["env"]}
    env["ARBITER_DATABASE_URL"] = "postgresql://arbiter_daemon@127.0.0.1/arbiter"
    return load_config(config, env=env).settings


def test_the_daemon_reads_policies_and_workloads_where_the_config_maps_are_mounted(
    tmp_path: Path,
) -> None:
    settings = deployed_settings(tmp_path)
    mounts = config_map_mounts()
    policies, workloads = mounts["arbiter-policies"], mounts["arbiter-workloads"]
    assert [str(p) for p in settings.policies.paths] == [policies["mountPath"]]
    assert [str(p) for p in settings.policies.workloads] == [workloads["mountPath"]]
    for mount in (policies, workloads):
        # a subPath mount is never updated: a changed ConfigMap would not reach the pod
        assert "subPath" not in mount and mount["readOnly"] is True


def config_map_volume(target: Path, source: Path) -> None:
    """Lay ``source``'s files out as the kubelet lays out a ConfigMap volume made by
    ``kubectl create configmap --from-file=source``: the regular files directly in it,
    in a timestamped directory, reached through a ``..data`` symlink and one symlink
    per key."""
    payload = target / "..2026_01_01_00_00_00.000000001"
    payload.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        if file.is_file() and not file.is_symlink():
            shutil.copyfile(file, payload / file.name)
    (target / "..data").symlink_to(payload.name)
    for file in sorted(payload.iterdir()):
        (target / file.name).symlink_to(Path("..data") / file.name)


def test_the_repositorys_policies_and_workloads_load_from_the_mounted_config_maps(
    tmp_path: Path,
) -> None:
    """What a pod sees: config.toml's [policies] paths, filled the way the kubelet fills
    the two ConfigMap volumes, read by the reconciler as the daemon reads them."""
    from arbiter.catalog import load_catalog
    from arbiter.ports import SystemClock
    from arbiter.reconcile import Reconciler

    settings = deployed_settings(tmp_path)
    root = tmp_path / "pod"  # the pod's / for the mount paths
    rebased = {}
    for key, source in (("paths", "policies"), ("workloads", "workloads")):
        (mounted,) = getattr(settings.policies, key)
        config_map_volume(root / Path(mounted).relative_to("/"), ROOT / source)
        rebased[key] = [root / Path(mounted).relative_to("/")]
    settings = settings.model_copy(
        update={"policies": settings.policies.model_copy(update=rebased)}
    )
    reconciler = Reconciler(
        None,  # type: ignore[arg-type]  # reading the files needs no store
        None,
        settings,
        load_catalog(),
        SystemClock(),
        stale_after={},
    )
    state = reconciler.reload(strict=True)
    assert state is not None and state.errors == []
    expected = {p.stem for p in (ROOT / "workloads").glob("*.yaml")}
    assert {w.name for w in state.workloads} == expected  # each file once, none missing
    assert len(state.book.policies) == len(
        [p for p in (ROOT / "policies").glob("*.yaml") if not p.name.endswith(".test.yaml")]
    )


def test_the_database_url_comes_from_the_credentials_secret() -> None:
    env = {item["name"]: item for item in container()["env"]}
    reference = env["ARBITER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "arbiter-credentials", "key": "database-url"}
    secret = manifest("Secret", "arbiter-credentials")
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for item in env.values()
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert keys <= set(secret["stringData"])


def test_the_service_the_monitor_and_the_budget_select_the_daemon_pods() -> None:
    pod_labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = manifest("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = manifest("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    budget = manifest("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["maxUnavailable"] < manifest("Deployment")["spec"]["replicas"]


# -- metrics: dashboard and alerts -------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every metric name the code defines (``*MetricFamily``, or a prometheus_client
    ``Counter``/``Gauge``/... with its first argument a literal), plus the series
    names Prometheus derives from counters, histograms and summaries."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "CounterMetricFamily": ("_total", "_created"),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
        "HistogramMetricFamily": ("_bucket", "_sum", "_count", "_created"),
        "Summary": ("_sum", "_count", "_created"),
        "SummaryMetricFamily": ("_sum", "_count", "_created"),
        "Info": ("_info",),
        "InfoMetricFamily": ("_info",),
    }
    kinds = {"Gauge", "Enum", "GaugeMetricFamily", "StateSetMetricFamily", *suffixes}
    names: set[str] = set()
    for path in sorted((ROOT / "arbiter").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            kind = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if kind in kinds and isinstance(first, ast.Constant) and isinstance(first.value, str):
                base = first.value.removesuffix("_total")
                names.add(first.value)
                names.update(base + suffix for suffix in suffixes.get(kind, ()))
    return names


def referenced_metric_names(text: str) -> set[str]:
    return set(re.findall(r"\barbiter_[a-z0-9_]+\b", text))


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            queries.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def test_the_metric_names_found_in_the_code_are_the_ones_served(
    endpoint: tuple[str, int],
) -> None:
    host, port = endpoint
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    served = set(re.findall(r"^# TYPE (\S+) ", body, flags=re.MULTILINE))
    assert served
    assert served <= exported_metric_names()


def test_every_metric_on_the_dashboard_is_exported_by_arbiter(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert queries
    used = set().union(*(referenced_metric_names(q) for q in queries))
    assert used, "the dashboard names no arbiter metric"
    exported = scraped_series(tmp_path) | exported_metric_names()
    assert used <= exported, sorted(used - exported)


class _Everything(dict[str, float]):
    """A mapping that has every key: the collector then yields every optional series."""

    def __init__(self) -> None:
        super().__init__(anything=1.0)  # not empty: "no reconcile pass yet" is {}

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> float:
        return 1.0

    def get(self, key: str, default: Any = None) -> float:  # type: ignore[override]
        return 1.0


def scraped_series(tmp_path: Path) -> set[str]:
    """Every series a scrape of a leader shows once every figure is known (fleet,
    reconcile, solver), by the name Prometheus stores it under (``_total`` counters)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from arbiter.http_api import StoreCollector
    from arbiter.store.db import make_engine, upgrade
    from arbiter.store.repositories import Store

    url = f"sqlite:///{tmp_path / 'arbiter.db'}"
    upgrade(url)
    engine = make_engine(url)
    registry = CollectorRegistry(auto_describe=False)
    state = {"leader": True, "mode": "enforce", "name": "test:1", "reconcile": _Everything()}
    registry.register(StoreCollector(Store(engine), lambda: state, _Everything))
    text = generate_latest(registry).decode()
    engine.dispose()
    return set(re.findall(r"^(arbiter_[a-z0-9_]+)[{ ]", text, flags=re.M))


def test_every_metric_arbiter_exports_has_a_panel_on_the_dashboard(tmp_path: Path) -> None:
    series = scraped_series(tmp_path)
    assert {"arbiter_leader", "arbiter_fleet_usd_per_hour", "arbiter_solver_gap"} <= series
    assert "arbiter_reconcile_passes_total" in series  # counters by their scraped name
    used = set().union(*(referenced_metric_names(q) for q in dashboard_queries()))
    assert series - used == set(), "no panel for these: add them to the dashboard"


def test_every_dashboard_panel_queries_the_chosen_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_metric_in_the_alerts_is_exported_by_arbiter() -> None:
    used = set().union(*(referenced_metric_names(rule["expr"]) for rule in alert_rules()))
    assert used
    assert used <= exported_metric_names(), sorted(used - exported_metric_names())


def test_the_prometheus_rule_carries_the_same_alerts_as_the_rule_file() -> None:
    assert manifest("PrometheusRule")["spec"] == yaml.safe_load(ALERTS.read_text())


@pytest.mark.parametrize(
    "command",
    [["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS.with_suffix(".test.yaml"))]],
    ids=["check", "unit-tests"],
)
def test_promtool_accepts_the_alerts_and_their_unit_tests_pass(command: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, *command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- IAM -------------------------------------------------------------------------------
#
# One file per identity and cloud, each kept equal to the calls of the module it is for:
# the market-data sources (providers/), the cloud executor (arbiter/executors/) and the
# aws-sqs interruption source (arbiter/interruptions/). A call that needs more than its
# own permission (tags on launch, a role passed to the instance, a disk made with the
# VM) adds it through the tables below, each entry saying why.


def module_tree(relative: str) -> ast.Module:
    path = ROOT / relative
    return ast.parse(path.read_text(), filename=str(path))


def provider_tree(name: str) -> ast.Module:
    return module_tree(f"providers/{name}.py")


def _string_arg(call: ast.Call) -> str | None:
    first = call.args[0] if call.args else None
    return str(first.value) if isinstance(first, ast.Constant) else None


def boto3_client_factories(tree: ast.Module) -> dict[str, str]:
    """Method name → AWS service, for every method returning a cached client:
    ``def ec2_client(self, region): return self._clients.get("ec2", region, ...)``."""
    factories = {}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "_clients"
                and _string_arg(node)
            ):
                factories[function.name] = str(_string_arg(node))
    return factories


def boto3_calls(relative: str) -> set[tuple[str, str]]:
    """``(service, operation)`` for each boto3 call in a module: methods called on, or
    paginators and waiters taken from, ``self.<factory>(...)``."""
    tree = module_tree(relative)
    factories = boto3_client_factories(tree)
    calls: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        receiver = node.func.value
        if not (
            isinstance(receiver, ast.Call)
            and isinstance(receiver.func, ast.Attribute)
            and receiver.func.attr in factories
        ):
            continue
        service = factories[receiver.func.attr]
        if node.func.attr in ("get_paginator", "get_waiter"):
            operation = _string_arg(node)
            assert operation is not None, ast.unparse(node)
            calls.add((service, operation))
        else:
            calls.add((service, node.func.attr))
    return calls


def aws_calls() -> set[tuple[str, str]]:
    return boto3_calls("providers/aws.py")


# Batch operations are authorised as the single operation (AWS SQS documentation).
IAM_ACTION_OVERRIDES = {("sqs", "delete_message_batch"): "sqs:DeleteMessage"}


def iam_action(service: str, operation: str) -> str:
    """``ec2``, ``describe_spot_price_history`` → ``ec2:DescribeSpotPriceHistory``, from
    botocore's own service model (the IAM prefix is the signing name)."""
    import botocore.session
    from botocore import xform_name

    if (service, operation) in IAM_ACTION_OVERRIDES:
        return IAM_ACTION_OVERRIDES[service, operation]
    model = botocore.session.get_session().get_service_model(service)
    names = [op for op in model.operation_names if xform_name(op) == operation]
    assert names, f"{service} has no operation {operation!r}"
    return f"{model.signing_name}:{names[0]}"


# What a call needs besides its own action.
AWS_IMPLIED_ACTIONS = {
    ("ec2", "run_instances"): {
        "ec2:CreateTags",  # TagSpecifications: instances and volumes are tagged at launch
        "iam:PassRole",  # IamInstanceProfile, with executor.options.aws.instance_profile
    },
}

AWS_POLICIES = {
    "aws-policy.json": "providers/aws.py",
    "aws-executor-policy.json": "arbiter/executors/cloud_aws.py",
    "aws-interruptions-policy.json": "arbiter/interruptions/aws_sqs.py",
}


def aws_policy_statements(filename: str) -> list[dict[str, Any]]:
    policy = json.loads((IAM / filename).read_text())
    assert policy["Version"] == "2012-10-17"
    statements: list[dict[str, Any]] = policy["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    return statements


def aws_policy_actions(filename: str = "aws-policy.json") -> set[str]:
    actions: set[str] = set()
    for statement in aws_policy_statements(filename):
        action = statement["Action"]
        actions.update([action] if isinstance(action, str) else action)
    return actions


@pytest.mark.parametrize("filename", sorted(AWS_POLICIES))
def test_each_aws_policy_allows_exactly_the_calls_its_module_makes(filename: str) -> None:
    calls = boto3_calls(AWS_POLICIES[filename])
    assert calls, f"no boto3 call found in {AWS_POLICIES[filename]}: the scan is broken"
    needed = {iam_action(service, operation) for service, operation in calls}
    for call in calls:
        needed |= AWS_IMPLIED_ACTIONS.get(call, set())
    assert aws_policy_actions(filename) == needed


def test_the_scan_finds_the_calls_that_launch_and_release_capacity() -> None:
    assert {("ec2", "run_instances"), ("ec2", "terminate_instances")} <= boto3_calls(
        "arbiter/executors/cloud_aws.py"
    )
    assert {("sqs", "receive_message"), ("sqs", "delete_message_batch")} <= boto3_calls(
        "arbiter/interruptions/aws_sqs.py"
    )


@pytest.mark.parametrize("filename", sorted(AWS_POLICIES))
def test_each_aws_module_builds_clients_only_for_the_services_in_its_policy(
    filename: str,
) -> None:
    # clients come from the shared cache: ``self._clients.get("ec2", region, ...)``
    created = set(boto3_client_factories(module_tree(AWS_POLICIES[filename])).values())
    services = {a.split(":")[0] for a in aws_policy_actions(filename)} - {"iam"}
    assert created == services


def sdk_modules(marker: str) -> set[str]:
    """The modules of arbiter/ and providers/ whose code contains ``marker``."""
    return {
        str(path.relative_to(ROOT))
        for folder in ("arbiter", "providers")
        for path in (ROOT / folder).rglob("*.py")
        if marker in path.read_text()
    }


def test_every_module_that_calls_a_cloud_api_has_its_permissions_in_deploy_iam() -> None:
    assert sdk_modules("self._clients.get(") == set(AWS_POLICIES.values())
    assert sdk_modules("from google.cloud import compute_v1") == set(GCP_ROLES.values())
    assert sdk_modules("ComputeManagementClient(") == set(AZURE_ROLES.values())


def test_the_aws_market_data_policy_only_reads() -> None:
    verbs = {action.split(":")[1] for action in aws_policy_actions("aws-policy.json")}
    assert all(v.startswith(("Describe", "Get", "List")) for v in verbs), verbs


def test_the_aws_executor_tags_only_at_launch_and_terminates_only_instances_it_tagged() -> None:
    from arbiter.executors.cloud import TAG_GROUP

    by_action = {
        action: statement
        for statement in aws_policy_statements("aws-executor-policy.json")
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else [])
    }
    tags = by_action["ec2:CreateTags"]["Condition"]
    assert tags == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    terminate = by_action["ec2:TerminateInstances"]["Condition"]
    assert terminate == {"Null": {f"aws:ResourceTag/{TAG_GROUP}": "false"}}
    passed = by_action["iam:PassRole"]["Condition"]
    assert passed == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_the_aws_interruption_policy_reads_and_deletes_only_its_queue() -> None:
    (queue,) = [
        s for s in aws_policy_statements("aws-interruptions-policy.json") if "sqs:" in str(s)
    ]
    assert queue["Resource"].startswith("arn:aws:sqs:")  # one queue, not "*"


def _compute_client(node: ast.expr) -> str | None:
    """``XClient`` for ``compute_v1.XClient`` or ``compute_v1.XClient(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "compute_v1"
        and node.attr.endswith("Client")
    ):
        from google.cloud import compute_v1

        assert hasattr(compute_v1, node.attr), node.attr
        return node.attr
    return None


def gcp_calls(relative: str) -> set[tuple[str, str]]:
    """``(client class, method)`` for each Compute Engine call of a module: on a client
    bound by ``with compute_v1.XClient(...) as name`` (within that block), or on
    ``self._client("name")`` where a ``{"name": compute_v1.XClient}`` table makes them."""
    tree = module_tree(relative)
    calls: set[tuple[str, str]] = set()
    factory: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                client = _compute_client(value)
                if client and isinstance(key, ast.Constant):
                    factory[str(key.value)] = client
        if isinstance(node, ast.With):
            bound = {
                item.optional_vars.id: client
                for item in node.items
                if (client := _compute_client(item.context_expr))
                and isinstance(item.optional_vars, ast.Name)
            }
            for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                if (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Attribute)
                    and isinstance(inner.func.value, ast.Name)
                    and inner.func.value.id in bound
                ):
                    calls.add((bound[inner.func.value.id], inner.func.attr))
    made = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "_client"
    ]
    used = 0
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call)
            and node.func.value in made
        ):
            name = _string_arg(node.func.value)
            assert name in factory, ast.unparse(node)
            calls.add((factory[name], node.func.attr))
            used += 1
    assert used == len(made), "a client kept in a variable: the scan would miss its calls"
    return calls


# Permissions per Compute Engine call (the API reference's "IAM permissions" of each
# method, and of the request fields arbiter sets). A call not in the table fails the
# test below, naming the call.
GCP_PERMISSIONS = {
    ("MachineTypesClient", "aggregated_list"): {"compute.machineTypes.list"},
    ("MachineTypesClient", "get"): {"compute.machineTypes.get"},
    ("RegionsClient", "list"): {"compute.regions.list"},
    ("RegionsClient", "get"): {"compute.regions.get"},
    ("InstancesClient", "aggregated_list"): {"compute.instances.list"},
    ("InstancesClient", "insert_unary"): {
        "compute.instances.create",
        "compute.disks.create",  # the boot disk (initialize_params)
        "compute.subnetworks.use",  # the network interface
        "compute.instances.setMetadata",  # startup-script, arbiter-offer-key
        "compute.instances.setLabels",  # arbiter-group, ...
        "compute.images.useReadOnly",  # an image of your own project
        "compute.subnetworks.useExternalIp",  # external_ip = true
        "compute.instances.setServiceAccount",  # service_account
    },
    ("InstancesClient", "delete_unary"): {
        "compute.instances.delete",
        "compute.disks.delete",  # the boot disk, auto-deleted with the instance
    },
    ("ZoneOperationsClient", "wait"): {"compute.zoneOperations.get"},
}

GCP_ROLES = {
    "gcp-role.yaml": "providers/gcp.py",
    "gcp-executor-role.yaml": "arbiter/executors/cloud_gcp.py",
}


def gcp_permissions_used(relative: str = "providers/gcp.py") -> set[str]:
    calls = gcp_calls(relative)
    unknown = calls - set(GCP_PERMISSIONS)
    assert not unknown, f"new Compute Engine calls {sorted(unknown)}: add their permissions"
    return set().union(*(GCP_PERMISSIONS[call] for call in calls))


@pytest.mark.parametrize("filename", sorted(GCP_ROLES))
def test_each_gcp_role_has_exactly_the_permissions_its_module_needs(filename: str) -> None:
    role = yaml.safe_load((IAM / filename).read_text())
    assert gcp_calls(GCP_ROLES[filename]), "no Compute Engine call found: the scan is broken"
    assert set(role["includedPermissions"]) == gcp_permissions_used(GCP_ROLES[filename])
    assert role["stage"] == "GA" and role["title"]


def test_the_gcp_scan_finds_the_calls_that_launch_and_release_capacity() -> None:
    assert {("InstancesClient", "insert_unary"), ("InstancesClient", "delete_unary")} <= (
        gcp_calls("arbiter/executors/cloud_gcp.py")
    )
    assert ("MachineTypesClient", "aggregated_list") in gcp_calls("providers/gcp.py")


# Azure's SDK carries no machine-readable map from operations to RBAC actions: this
# table is it. A call that is not in it fails the test below, naming the call.
AZURE_ACTIONS = {
    ("resource_skus", "list"): {"Microsoft.Compute/skus/read"},
    ("usage", "list"): {"Microsoft.Compute/locations/usages/read"},
    ("virtual_machines", "list"): {"Microsoft.Compute/virtualMachines/read"},
    ("virtual_machines", "begin_create_or_update"): {
        "Microsoft.Compute/virtualMachines/write",
        "Microsoft.Compute/disks/write",  # the managed OS disk, made with the VM
        "Microsoft.Compute/images/read",  # an image resource id instead of a marketplace one
        "Microsoft.Network/networkInterfaces/write",  # the NIC, made with the VM
        "Microsoft.Network/networkInterfaces/join/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",  # on subnet_id
        "Microsoft.Compute/locations/operations/read",  # polling the long-running operation
    },
    ("virtual_machines", "begin_delete"): {
        "Microsoft.Compute/virtualMachines/delete",
        "Microsoft.Compute/disks/delete",  # deleteOption = Delete
        "Microsoft.Network/networkInterfaces/delete",  # deleteOption = Delete
        "Microsoft.Compute/locations/operations/read",
    },
}

AZURE_ROLES = {
    "azure-role.json": "providers/azure.py",
    "azure-executor-role.json": "arbiter/executors/cloud_azure.py",
}


def azure_calls(relative: str = "providers/azure.py") -> set[tuple[str, str]]:
    """``(operation group, method)`` for each ARM call in a module."""
    from azure.core.credentials import AccessToken
    from azure.mgmt.compute import ComputeManagementClient

    class NoCredential:
        def get_token(self, *_args: Any, **_kwargs: Any) -> AccessToken:
            raise AssertionError("no token is needed to list operation groups")

    client = ComputeManagementClient(NoCredential(), "00000000-0000-0000-0000-000000000000")
    groups = {name for name in vars(client) if not name.startswith("_")}
    client.close()
    calls = set()
    for node in ast.walk(module_tree(relative)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr in groups
        ):
            calls.add((node.func.value.attr, node.func.attr))
    return calls


@pytest.mark.parametrize("filename", sorted(AZURE_ROLES))
def test_each_azure_role_has_exactly_the_actions_its_module_needs(filename: str) -> None:
    role = json.loads((IAM / filename).read_text())
    calls = azure_calls(AZURE_ROLES[filename])
    assert ("resource_skus", "list") in calls  # the scan finds calls at all
    unknown = calls - set(AZURE_ACTIONS)
    assert not unknown, f"new ARM calls {sorted(unknown)}: add their actions to the role"
    assert set(role["Actions"]) == set().union(*(AZURE_ACTIONS[call] for call in calls))
    assert role["NotActions"] == role["DataActions"] == role["NotDataActions"] == []
    assert role["IsCustom"] is True


def test_the_azure_scan_finds_the_calls_that_launch_and_release_capacity() -> None:
    assert {
        ("virtual_machines", "begin_create_or_update"),
        ("virtual_machines", "begin_delete"),
    } <= azure_calls("arbiter/executors/cloud_azure.py")


def test_the_market_data_identity_never_writes() -> None:
    assert all(
        a.split(":")[1].startswith(("Describe", "Get", "List"))
        for a in aws_policy_actions("aws-policy.json")
    )
    gcp = yaml.safe_load((IAM / "gcp-role.yaml").read_text())["includedPermissions"]
    assert all(p.endswith((".list", ".get")) for p in gcp)
    azure = json.loads((IAM / "azure-role.json").read_text())["Actions"]
    assert all(a.endswith("/read") for a in azure)


def test_the_iam_readme_lists_every_file_in_deploy_iam() -> None:
    readme = (IAM / "README.md").read_text()
    for path in sorted(IAM.iterdir()):
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, path.name


# -- PostgreSQL roles -------------------------------------------------------------------


def role_url(url: str, role: str, password: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(username=role, password=password).render_as_string(False)


def run_roles_script(admin_url: str) -> None:
    from sqlalchemy.engine import make_url

    plain = make_url(admin_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(ROLES_SQL.read_text().encode())


@pytest.fixture
def roles(postgres_server: Any) -> Iterator[dict[str, str]]:
    """A fresh database with roles.sql applied: URLs for admin, daemon and reader."""
    import secrets

    from sqlalchemy.engine import make_url

    admin = postgres_server.new_database()
    run_roles_script(admin)
    password = secrets.token_hex(16)
    plain = make_url(admin).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(plain, autocommit=True) as conn:
        for role in ("arbiter_daemon", "arbiter_readonly"):
            conn.execute(f"ALTER ROLE {role} PASSWORD '{password}'".encode())
    yield {
        "admin": admin,
        "daemon": role_url(admin, "arbiter_daemon", password),
        "reader": role_url(admin, "arbiter_readonly", password),
    }
    postgres_server.drop_database(admin)
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
        for role in ("arbiter_daemon", "arbiter_readonly"):
            # Still granted on another database of the session: dropped with the server.
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                conn.execute(f"DROP ROLE IF EXISTS {role}".encode())


def connect(url: str) -> psycopg.Connection[Any]:
    from sqlalchemy.engine import make_url

    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))


@pytest.mark.postgres
def test_the_daemon_role_migrates_and_writes_and_the_reader_only_reads(
    roles: dict[str, str],
) -> None:
    from datetime import UTC, datetime, timedelta

    from arbiter.store.db import check_current, make_engine, upgrade
    from arbiter.store.repositories import Store

    upgrade(roles["daemon"])  # the documented order: roles.sql, then db upgrade as the daemon
    daemon = make_engine(roles["daemon"])
    try:
        Store(daemon).leases.acquire(
            "leader", "host:1", now=datetime.now(UTC), ttl=timedelta(seconds=30)
        )
    finally:
        daemon.dispose()

    reader = make_engine(roles["reader"], read_only=True)
    try:
        check_current(reader)  # what every read-only CLI command does first
        assert Store(reader).sources.all() == []
    finally:
        reader.dispose()

    with connect(roles["reader"]) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT holder FROM leases").fetchall() == [("host:1",)]
        conn.rollback()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM leases")
        conn.rollback()
        # Not just the session default: the grants refuse writes too.
        conn.autocommit = True
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM leases")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO leases (name) VALUES ('x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE intruder (id int)")


@pytest.mark.postgres
def test_the_roles_script_is_idempotent_and_covers_tables_made_by_another_role(
    roles: dict[str, str],
) -> None:
    from arbiter.store.db import upgrade

    upgrade(roles["admin"])  # migrations run by the admin, not by arbiter_daemon
    run_roles_script(roles["admin"])  # ... so roles.sql is run again afterwards
    with connect(roles["reader"]) as conn:
        assert conn.execute("SELECT count(*) FROM offers").fetchone() == (0,)
    with connect(roles["daemon"]) as conn:
        conn.execute(
            "INSERT INTO leases (name, holder, acquired_at, renewed_at, expires_at)"
            " VALUES ('x', 'host:1', now(), now(), now())"
        )
        conn.commit()
