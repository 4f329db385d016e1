"""Shared fixtures: the real stand-in model, loaded once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Saved role prefixes go to a fresh folder (subprocesses inherit it), not the user's ~/.cache.
os.environ["EDGEQWEN_CACHE"] = tempfile.mkdtemp(prefix="edgeqwen-test-cache-")

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# A minimal valid classify role, for tests that break it one field at a time.
VALID_ROLE = """\
kind: classify
system: Classify the topic.
template: "Text: {text}"
labels:
  - name: sports
  - name: politics
"""


def standin_path() -> Path:
    path = Path(os.environ.get("EDGEQWEN_MODEL") or STANDIN)
    if not path.is_file():
        pytest.skip(f"needs the real model: {path} is missing (run `make model`)")
    return path


@pytest.fixture(scope="session")
def model_path() -> Path:
    return standin_path()


@pytest.fixture(scope="session")
def eq(model_path):
    from edgeqwen import EdgeQwen

    return EdgeQwen(model_path)


@pytest.fixture
def write_role(tmp_path):
    """Write a role file into a fresh prompts dir and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def console_script() -> str:
    """The `edgeqwen` command pip installed beside this Python (pyproject.toml, [project.scripts])."""
    script = Path(sys.executable).with_name("edgeqwen")
    if not script.is_file():
        pytest.fail(f"{script} is missing: install edgeqwen into this environment (pip install -e .)")
    return str(script)


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `edgeqwen` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env["EDGEQWEN_MODEL"] = full_env.get("EDGEQWEN_MODEL") or str(STANDIN)
    return subprocess.run(
        [sys.executable, "-m", "edgeqwen", *args],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )
