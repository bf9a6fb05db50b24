"""Hostile input files: policies, workloads, policy test files and the config TOML.

tests/test_policy_loader.py pins how the loader refuses each construct in a single
policy file (YAML bombs, aliases, deep nesting, more than 1 MiB, binary, Python tags,
symbolic links out of the tree, FIFOs, unknown keys, wrong types). This suite covers
what sits around it: the same attacks

* dropped into the policy or workload directory of a **running** reconciler (and the
  daemon's SIGHUP path): refused with the file named, and the set in force stays — the
  workload keeps running where it is, nothing is applied;
* in policy test files (``*.test.yaml``, read by ``arbiter policy test`` in CI on pull
  requests), including paths in them that lead out of the tree;
* in the config file, which now refuses binary, deeply nested, oversized and
  non-regular files with one line naming it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from arbiter.config import MAX_CONFIG_BYTES, load_config
from arbiter.errors import ConfigError
from arbiter.policy_testing import run_tests
from arbiter.store.repositories import Store
from tests.reliability.world import CATALOG, World, offer

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "policies"
TODAY = date(2025, 6, 2)
LAUGHS = (DATA / "bad" / "laughs.yaml").read_bytes()

HOSTILE: dict[str, tuple[bytes, str]] = {
    # name: (content, what the finding says)
    "billion-laughs": (LAUGHS, "YAML anchors (&a) are not allowed"),
    "deep-nesting": (b"a: " + b"[" * 100_000 + b"]" * 100_000, "nested more than"),
    "huge": (b"# padding\n" * 110_000, "larger than 1048576 bytes"),
    "binary": (bytes(range(256)) * 16, "binary file"),
    "not-utf8": (b"apiVersion: caf\xe9\n", "not UTF-8 text"),
    "python-tag": (b"apiVersion: !!python/object/apply:os.system [touch PWNED]\n", "YAML tag"),
    "not-a-mapping": (b"- a\n- list\n", "a document must be a mapping"),
    "wrong-types": (
        b"apiVersion: arbiter/v1\nkind: PlacementPolicy\nmetadata: [1, 2]\nconstraints: 7\n",
        "metadata",
    ),
    "unknown-key": (
        b"apiVersion: arbiter/v1\nkind: PlacementPolicy\nmetadata: {name: sneaky}\n"
        b"constraints: []\nbackdoor: {allow_all: true}\n",
        "backdoor",
    ),
}
WORKLOAD_HOSTILE = {
    **HOSTILE,
    "wrong-types": (
        b"apiVersion: arbiter/v1\nkind: Workload\nmetadata: {name: w}\nspec: {replicas: many}\n",
        "spec",
    ),
    "unknown-key": (
        b"apiVersion: arbiter/v1\nkind: Workload\nmetadata: {name: w}\n"
        b"spec: {data_class: internal, gpu_options: [{model: L4, tokens_per_second: 1}], "
        b"replicas: 1, run_as_root: true}\n",
        "run_as_root",
    ),
}


def running_world(store: Store, tmp_path: Path) -> World:
    """A reconciler that placed the workload on europe-west4 under the valid set."""
    world = World(store, tmp_path)
    world.prices({offer("europe-west4"): 1.0, offer("europe-west1"): 1.5})
    world.tick(3)
    assert world.placements() == [(offer("europe-west4").key, 2)]
    return world


def assert_set_kept(world: World, revision: str, hostile: Path, says: str) -> None:
    """The reload was refused naming the file, and the reconciler runs on as before."""
    state = world.reconciler.reload(force=True)
    assert state is not None and state.revision == revision, "a hostile set was applied"
    assert any(str(hostile) in e and says in e for e in state.errors), state.errors
    before = len(world.migrations())
    world.prices({offer("europe-west4"): 1.0, offer("europe-west1"): 1.5})
    world.tick(3)
    assert world.placements() == [(offer("europe-west4").key, 2)]
    assert len(world.migrations()) == before, "nothing was moved"


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_policy_file_is_refused_by_name_and_the_running_set_stays(
    store: Store, tmp_path: Path, kind: str
) -> None:
    world = running_world(store, tmp_path)
    revision = world.reconciler.policy.revision  # type: ignore[union-attr]
    hostile = tmp_path / "policies" / f"{kind}.yaml"
    content, says = HOSTILE[kind]
    hostile.write_bytes(content.replace(b"PWNED", str(tmp_path / "PWNED").encode()))
    assert_set_kept(world, revision, hostile, says)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", sorted(WORKLOAD_HOSTILE))
def test_a_hostile_workload_file_is_refused_by_name_and_the_running_set_stays(
    store: Store, tmp_path: Path, kind: str
) -> None:
    world = running_world(store, tmp_path)
    revision = world.reconciler.policy.revision  # type: ignore[union-attr]
    hostile = tmp_path / "workloads" / f"{kind}.yaml"
    content, says = WORKLOAD_HOSTILE[kind]
    hostile.write_bytes(content)
    assert_set_kept(world, revision, hostile, says)


@pytest.mark.parametrize("where", ["policies", "workloads"])
def test_symbolic_links_out_of_the_directories_are_refused_and_nothing_behind_them_read(
    store: Store, tmp_path: Path, where: str
) -> None:
    world = running_world(store, tmp_path)
    revision = world.reconciler.policy.revision  # type: ignore[union-attr]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.yaml").write_bytes(LAUGHS)
    link = tmp_path / where / "evil.yaml"
    link.symlink_to(outside / "evil.yaml")
    assert_set_kept(world, revision, link, "symbolic link leads out of")
    link.unlink()
    link = tmp_path / where / "more"
    link.symlink_to(outside, target_is_directory=True)
    assert_set_kept(world, revision, link, "symbolic link leads out of")


def test_a_fifo_in_the_workload_directory_is_refused_without_blocking_the_reload(
    store: Store, tmp_path: Path
) -> None:
    world = running_world(store, tmp_path)
    revision = world.reconciler.policy.revision  # type: ignore[union-attr]
    fifo = tmp_path / "workloads" / "pipe.yaml"
    os.mkfifo(fifo)
    assert_set_kept(world, revision, fifo, "not a regular file")


def test_the_daemons_reload_refuses_a_hostile_set_logs_each_file_and_keeps_its_own(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    from arbiter.config import Settings
    from arbiter.daemon import Daemon

    world = running_world(store, tmp_path)
    daemon = Daemon(Settings(), store.engine, CATALOG, database_url=store_url, clock=world.clock)
    daemon.reconciler = world.reconciler
    kept = world.reconciler.policy
    for hostile in (tmp_path / "policies" / "laughs.yaml", tmp_path / "workloads" / "bin.yaml"):
        hostile.write_bytes(LAUGHS if hostile.parent.name == "policies" else bytes(range(256)))
        with capture_logs() as logs:
            daemon.reload_policies()
        (refused,) = [
            e for e in logs if e["event"] == "reload refused: keeping the policies in force"
        ]
        assert refused["revision"] == kept.revision  # type: ignore[union-attr]
        assert any(str(hostile) in e for e in refused["errors"]), refused
        assert world.reconciler.policy is kept
        hostile.unlink()


# -- policy test files ------------------------------------------------------------------


def policy_tree(tmp_path: Path) -> Path:
    """A copy of tests/data/policies/good with its workloads and snapshot: one valid
    policy, one passing test file. The tree its test files may name files in is
    ``tmp_path`` (``root=``): it is in no git work tree, nor in the current directory."""
    import shutil

    shutil.copytree(DATA / "good", tmp_path / "policies" / "good")
    shutil.copytree(DATA / "workloads", tmp_path / "policies" / "workloads")
    shutil.copytree(DATA.parent / "snapshots", tmp_path / "snapshots")
    tree = tmp_path / "policies" / "good"
    assert run_tests([tree], today=TODAY, catalog=CATALOG, root=tmp_path).passed
    return tmp_path / "policies" / "good"


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_policy_test_file_fails_by_name_and_the_others_still_run(
    tmp_path: Path, kind: str
) -> None:
    tree = policy_tree(tmp_path)
    hostile = tree / f"{kind}.test.yaml"
    content, says = HOSTILE[kind]
    if kind in ("wrong-types", "unknown-key"):
        content, says = b"policy: eu-llm-inference\nsnapshot: 7\ncases: {a: 1}\n", "cases"
    hostile.write_bytes(content)
    run = run_tests([tree], today=TODAY, catalog=CATALOG, root=tmp_path)
    assert not run.passed
    (bad,) = [f for f in run.files if f.source == str(hostile)]
    assert bad.findings and any(says in str(f) for f in bad.findings), bad.findings
    (good,) = [f for f in run.files if f.source != str(hostile)]
    assert good.passed and good.cases, "the valid test file still ran"


# Paths a policy test file names (its snapshot, its workloads) must lead inside the tree
# it belongs to: a pull request must not make `arbiter policy test` in CI read any file
# the runner can. A snapshot must be a regular file of bounded size: a device such as
# /dev/zero would be read until memory runs out.
ESCAPES = {
    "snapshot-absolute": "snapshot: /etc/hostname\n",
    "snapshot-dotdot": "snapshot: ../../../../../../../../../../etc/hostname\n",
    "workloads-absolute": "snapshot: ../../snapshots/eu-small.json\nworkloads: [/etc]\n",
}


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_a_policy_test_file_naming_a_path_out_of_the_tree_is_refused_naming_the_field(
    tmp_path: Path, kind: str
) -> None:
    tree = policy_tree(tmp_path)
    hostile = tree / "escape.test.yaml"
    hostile.write_text(
        "policy: eu-llm-inference\n"
        + ESCAPES[kind]
        + "cases:\n  - name: x\n    workload: chat-api\n    expect: {unplaceable: false}\n"
    )
    run = run_tests([tree], today=TODAY, catalog=CATALOG, root=tmp_path)
    (bad,) = [f for f in run.files if f.source == str(hostile)]
    field = kind.split("-")[0]
    assert any(f.source == str(hostile) and (f.field or "").startswith(field) for f in bad.findings)


@pytest.mark.timeout(60)
def test_a_policy_test_file_naming_a_device_as_its_snapshot_fails_cleanly(
    tmp_path: Path,
) -> None:
    """Run in a child process whose address space is capped at 2 GiB: it must end with a
    clean error, not read /dev/zero until the cap kills it. It runs in ``tmp_path``,
    the tree the test files may name files in (it is in no git work tree)."""
    tree = policy_tree(tmp_path)
    (tree / "zero.test.yaml").write_text(
        "policy: eu-llm-inference\nsnapshot: /dev/zero\n"
        "cases:\n  - name: x\n    workload: chat-api\n    expect: {unplaceable: false}\n"
    )

    command = [sys.executable, "-m", "arbiter", "policy", "test", str(tree), "--today", str(TODAY)]
    result = subprocess.run(
        ["sh", "-c", 'ulimit -v 2097152 && exec "$@"', "sh", *command],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-500:]
    assert "zero.test.yaml" in result.stdout + result.stderr
    assert "PASS" in result.stdout, "the other test file still ran"


def write_test_file(tree: Path, name: str, snapshot: str, workloads: str = "") -> Path:
    path = tree / name
    path.write_text(
        f"policy: eu-llm-inference\nsnapshot: {snapshot}\n{workloads}"
        "cases:\n  - name: x\n    workload: chat-api\n    expect: {unplaceable: false}\n"
    )
    return path


@pytest.mark.parametrize("where", ["snapshot", "workloads"])
def test_a_symbolic_link_in_the_tree_leading_out_of_it_is_refused_naming_the_field(
    tmp_path: Path, where: str
) -> None:
    tree = policy_tree(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "s.json").write_text("{}")
    (tmp_path / "snapshots" / "link.json").symlink_to(outside / "s.json")
    (tmp_path / "policies" / "link").symlink_to(outside, target_is_directory=True)
    hostile = write_test_file(
        tree,
        "link.test.yaml",
        "../../snapshots/link.json" if where == "snapshot" else "../../snapshots/eu-small.json",
        "workloads: [../workloads, ../link]\n" if where == "workloads" else "",
    )

    run = run_tests([tree], today=TODAY, catalog=CATALOG, root=tmp_path)

    (bad,) = [f for f in run.files if f.source == str(hostile)]
    (finding,) = bad.findings
    assert finding.field == ("snapshot" if where == "snapshot" else "workloads[1]")
    assert "leads out of" in finding.message and finding.line == (2 if where == "snapshot" else 3)
    assert [f.passed for f in run.files if f is not bad] == [True]


@pytest.mark.parametrize("kind", ["fifo", "directory", "oversized"])
def test_a_snapshot_in_the_tree_that_is_not_a_small_regular_file_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    from arbiter.policy_testing import MAX_SNAPSHOT_BYTES

    tree = policy_tree(tmp_path)
    snapshot = tmp_path / "snapshots" / "odd.json"
    if kind == "fifo":
        os.mkfifo(snapshot)  # reading it would block forever
    elif kind == "directory":
        snapshot.mkdir()
    else:
        with snapshot.open("wb") as handle:  # sparse: no disk space used
            handle.truncate(MAX_SNAPSHOT_BYTES + 1)
    hostile = write_test_file(tree, "odd.test.yaml", "../../snapshots/odd.json")

    run = run_tests([tree], today=TODAY, catalog=CATALOG, root=tmp_path)

    (bad,) = [f for f in run.files if f.source == str(hostile)]
    (finding,) = bad.findings
    assert finding.field == "snapshot" and finding.source == str(hostile)
    says = "larger than 67108864 bytes" if kind == "oversized" else "not a regular file"
    assert says in finding.message


def test_a_policy_test_may_name_any_file_in_the_git_work_tree_it_is_in(tmp_path: Path) -> None:
    from arbiter.policy_testing import tree_root

    policy_tree(tmp_path)
    (tmp_path / ".git").mkdir()  # all tree_root looks for

    assert tree_root(tmp_path / "policies" / "good") == tmp_path
    assert run_tests([tmp_path / "policies" / "good"], today=TODAY, catalog=CATALOG).passed


def test_outside_a_git_work_tree_the_tree_is_the_current_directory_or_the_path_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arbiter.policy_testing import tree_root

    tree = policy_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert tree_root("policies/good") == tmp_path.resolve()
    assert run_tests(["policies/good"], today=TODAY, catalog=CATALOG).passed

    monkeypatch.chdir(tmp_path / "snapshots")
    assert tree_root(tree) == tree.resolve()
    run = run_tests([tree], today=TODAY, catalog=CATALOG)
    (finding,) = run.files[0].findings
    assert finding.field == "snapshot" and "leads out of" in finding.message


# -- the config file ----------------------------------------------------------------------

CONFIG_HOSTILE: dict[str, tuple[bytes, str, str | None]] = {
    # name: (content, message, key)
    "binary": (bytes(range(256)) * 4, "not UTF-8 text", None),
    "deep-nesting": (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply", None),
    "deep-tables": (b"x = " + b"{a = " * 5000 + b"1" + b"}" * 5000 + b"\n", "nested too", None),
    "huge": (b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), "larger than 1048576 bytes", None),
    "not-toml": (b"[daemon\nmode = 'enforce'\n", "not valid TOML", None),
    "wrong-type": (
        b"[daemon]\nlease_seconds = 'forever'\n",
        "valid number",
        "daemon.lease_seconds",
    ),
    "unknown-key": (b"[daemon]\nrun_as = 'root'\n", "unknown key", "daemon.run_as"),
    "unknown-deep-key": (
        b"[sources.x]\nkind = 'replay'\nbackdoor = true\n",
        "unknown key",
        "sources.x.backdoor",
    ),
    "bad-source-kind": (b"[sources.x]\nkind = 'shell'\n", "unknown source kind", "sources.x.kind"),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_HOSTILE))
def test_a_hostile_config_file_is_one_error_naming_the_file_and_key(
    tmp_path: Path, kind: str
) -> None:
    content, says, key = CONFIG_HOSTILE[kind]
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.source == str(path) and says in str(caught.value)
    assert caught.value.key == key


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_config_path_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path, kind: str
) -> None:
    path = {"fifo": tmp_path / "pipe.toml", "device": Path("/dev/zero"), "directory": tmp_path}[
        kind
    ]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file") as caught:
        load_config(path, env={})
    assert caught.value.source == str(path)


@pytest.mark.parametrize("kind", ["binary", "deep-nesting"])
def test_arbiter_run_with_a_hostile_config_exits_1_with_one_line_and_no_traceback(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(CONFIG_HOSTILE[kind][0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARBITER_")}
    env.update({"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")})
    result = subprocess.run(
        [sys.executable, "-m", "arbiter", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"arbiter: error: {path}: ")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "data" / "arbiter" / "arbiter.db").exists(), "nothing was started"


def test_a_config_error_never_echoes_a_secret_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[database]\nurl = 12345\n[sources.em]\nkind = "electricitymaps"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "12345" not in str(caught.value)
    path.write_text('[daemon]\nmode = "enforce"\n')
    env = {
        "ARBITER_DATABASE_URL": "postgresql://u:env-s3cret@127.0.0.1/x",
        "ARBITER_DAEMON__X": "1",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    assert "env-s3cret" not in str(caught.value)
