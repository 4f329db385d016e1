"""The code's shape holds: layers, no import circle, module sizes, one-line jobs (scripts/check_layers.py)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, console_script


def test_layers_circles_sizes_and_docstrings():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_layers.py")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok:")


def test_ruff_finds_nothing():
    """pyproject.toml's [tool.ruff]: lines up to 120, pyflakes, pycodestyle and sorted imports."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def test_python_m_edgeqwen_is_the_console_script():
    by_module = subprocess.run([sys.executable, "-m", "edgeqwen", "--help"], capture_output=True, text=True,
                               timeout=120)
    by_script = subprocess.run([console_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert by_module.returncode == by_script.returncode == 0
    assert by_module.stdout == by_script.stdout and "run" in by_module.stdout
