"""Where an artefact came from: package version and git commit, recorded with every run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from workbench import __version__

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    return __version__


def git_commit() -> str | None:
    """`git describe --always --dirty` of the workbench checkout, or None when not installed from git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(_PACKAGE_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
