"""What code is running: the package version and, where known, the git commit."""

import os
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from app.core.config import get_settings


def code_version() -> str:
    configured = get_settings().code_version
    if configured:
        return configured
    try:
        return version("licchavi-service")
    except PackageNotFoundError:
        return "unknown"


@lru_cache
def git_commit() -> str | None:
    """GIT_COMMIT from the environment (set by image builds), else the checkout's HEAD."""
    configured = os.environ.get("GIT_COMMIT")
    if configured:
        return configured[:64]
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = completed.stdout.strip()
    return commit[:64] if completed.returncode == 0 and commit else None
