"""Policy and workload files as they were at a git revision, for ``arbiter policy diff``.

Runs ``git`` (never a shell) in the working directory; the files are unpacked into a
temporary directory with tar's safe ``data`` filter, so a hostile archive member (an
absolute path, ``..``, a device or a link out of the tree) is refused, not written.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from arbiter.errors import ArbiterError


class GitError(ArbiterError):
    """git is missing, the directory is not a repository, or the revision is unknown."""


def _git(*args: str) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, check=False, timeout=60, env=_env()
        )
    except FileNotFoundError:
        raise GitError("git is not installed (needed for --base)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {' '.join(args)} took longer than 60 s") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {' '.join(args)}: {message[-1] if message else 'failed'}")
    return done.stdout


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def short_revision(rev: str) -> str:
    """The abbreviated commit id of ``rev`` (raises GitError when unknown)."""
    return _git("rev-parse", "--short", f"{rev}^{{commit}}").decode().strip()


def files_at(rev: str, paths: Sequence[str], dest: Path) -> list[Path]:
    """Unpack ``paths`` (relative to the working directory) as they were at ``rev`` into
    ``dest``; returns the paths under ``dest`` to load, one per given path. A path that
    did not exist at ``rev`` comes back as an empty directory (nothing was there)."""
    short_revision(rev)
    out: list[Path] = []
    for given in paths:
        rel = os.path.relpath(given)
        if rel.startswith(".."):
            raise GitError(f"{given} is outside the working directory; --base needs paths in it")
        target = dest / rel
        listed = _git("ls-tree", "-r", "--name-only", rev, "--", rel).decode().split("\n")
        if not any(listed):
            target.mkdir(parents=True, exist_ok=True)
            out.append(target)
            continue
        archive = _git("archive", "--format=tar", rev, "--", rel)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
        out.append(target)
    return out
