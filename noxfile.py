"""The test suite on every CPython from 3.11 up that this machine has (``make test-pythons``).

``make test`` runs lint, types and the suite on the interpreter that built ``.venv``; this runs the
suite again on each other version, in a virtualenv of its own under ``.nox/``. Interpreters are
found on PATH, or among pyenv's versions (``$PYENV_ROOT/versions/3.12.*``) when pyenv's shims do
not expose them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

CANDIDATES = ("3.11", "3.12", "3.13", "3.14")


def _works(python: str) -> bool:
    """A pyenv shim exists for every version pyenv has, but fails for those not enabled."""
    try:
        subprocess.run([python, "-c", "pass"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _pyenv_bins(version: str) -> list[str]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    return [str(d / "bin") for d in sorted((root / "versions").glob(f"{version}.*"), reverse=True)]


def _found() -> list[str]:
    """The versions available, putting pyenv's directories on PATH for nox to find them."""
    found: list[str] = []
    extra: list[str] = []
    for version in CANDIDATES:
        on_path = shutil.which(f"python{version}")
        if on_path is not None and _works(on_path):
            found.append(version)
            continue
        for folder in _pyenv_bins(version):
            candidate = Path(folder) / f"python{version}"
            if candidate.is_file() and _works(str(candidate)):
                extra.append(folder)
                found.append(version)
                break
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])
    return found


PYTHONS = _found()
OTHERS = [v for v in PYTHONS if v != f"{sys.version_info[0]}.{sys.version_info[1]}"]


def _suite(session: nox.Session) -> None:
    """What ``make test`` installs, so every version runs the same suite."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


tests = nox.session(python=PYTHONS, name="tests")(_suite)
"""The pytest suite on each interpreter (arguments after ``--`` go to pytest)."""

others = nox.session(python=OTHERS, name="others")(_suite)
"""The suite on every version but the one running nox (which ``make test`` covers)."""
