"""Shared fixtures: the real stand-in model, loaded once per test session.

Two tiers: every test that needs the model file reaches it through the `model_path` fixture (`eq`,
`cli` and the module fixtures that start servers depend on it), and is marked `model` here, once,
by that dependency: `pytest -m "not model"` (make test-fast) runs the rest, and without the model
file the model tests skip instead of failing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Saved role prefixes go to a fresh folder (subprocesses inherit it), not the user's ~/.cache.
os.environ["EDGEQWEN_CACHE"] = tempfile.mkdtemp(prefix="edgeqwen-test-cache-")
atexit.register(shutil.rmtree, os.environ["EDGEQWEN_CACHE"], ignore_errors=True)  # 82 were left in /tmp here

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


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "model_path" in item.fixturenames:  # the fixture closure: eq, cli, servers... all depend on it
            item.add_marker(pytest.mark.model)



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


@pytest.fixture(scope="session")
def cli(model_path):
    """run_cli with the real model: the `edgeqwen` command in a subprocess, $EDGEQWEN_MODEL set to it."""

    def run(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        return run_cli(*args, env={"EDGEQWEN_MODEL": str(model_path), **(env or {})}, **kwargs)

    return run


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `edgeqwen` command in a subprocess, with no model unless `env` names one (see `cli`)."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("EDGEQWEN_MODEL", str(NO_MODEL))
    return subprocess.run(
        [sys.executable, "-m", "edgeqwen", *args],
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )


NO_MODEL = REPO / "models" / "no-model-for-this-test.gguf"


class Invoked:
    """What an in-process run of the `edgeqwen` command left: exit code, stdout and stderr as text."""

    def __init__(self, result) -> None:
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def _invoker(env: dict[str, str]):
    from typer.testing import CliRunner

    from edgeqwen.cli import app

    def invoke(*args: str, input: str | bytes | None = None, env_extra: dict | None = None) -> Invoked:
        # catch_exceptions=False: an exception the command let through (a traceback for a user) fails the test
        result = CliRunner().invoke(app, list(args), input=input, env={**env, **(env_extra or {})},
                                    catch_exceptions=False)
        return Invoked(result)

    return invoke


@pytest.fixture
def invoke():
    """The `edgeqwen` command in this process (typer's test runner) with no model file: for what needs
    none (help, refusals before the load, roles, info of a given file)."""
    return _invoker({"EDGEQWEN_MODEL": str(NO_MODEL)})


@pytest.fixture
def invoke_model(eq, model_path, monkeypatch):
    """The `edgeqwen` command in this process on the real model. A command that asks for the default
    settings gets the session's EdgeQwen instead of loading the model again."""
    from edgeqwen.cli import options

    load = options.load_model

    def shared(model, **keywords):
        defaults = not any(keywords.get(k) for k in ("n_ctx", "threads", "prompts_dir", "kv_cache", "verbose"))
        return eq if defaults and (model is None or Path(model) == model_path) else load(model, **keywords)

    monkeypatch.setattr(options, "load_model", shared)
    return _invoker({"EDGEQWEN_MODEL": str(model_path)})


def read_line_until(response, wanted, timeout: float = 120) -> bytes:
    """Lines of a streamed HTTP response until one for which `wanted(line)` holds; fails (never spins)
    when the stream ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = response.fp.readline()
        if not line:
            raise AssertionError("the stream ended before the line waited for")
        if wanted(line):
            return line
    raise AssertionError(f"no such line within {timeout} s")


@pytest.fixture(scope="session", autouse=True)
def output_matrix_read_once():
    """Tests that train final-state heads read the model's output matrix (545 MB for the stand-in)
    and compute its Gram matrix once per model file, not once per head."""
    from functools import lru_cache

    import edgeqwen.training.head as training

    bases = {}

    def basis_once(output):  # W^T W of the same output matrix: computed once too
        if id(output) not in bases:
            bases[id(output)] = make_basis(output)
        return bases[id(output)]

    make_basis = training.HiddenFromLogits
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "output_matrix", lru_cache(maxsize=2)(training.output_matrix))
        patch.setattr(training, "HiddenFromLogits", basis_once)
        yield


@pytest.fixture
def fake_eq():
    """EdgeQwen on the deterministic fake engine (tests/fake_engine.py): no model file, no llama.cpp."""
    from edgeqwen import EdgeQwen

    from fake_engine import FakeEngine

    return EdgeQwen(engine=FakeEngine(), prefix_cache=False)


@pytest.fixture
def invoke_fake(monkeypatch):
    """The `edgeqwen` command in this process on the fake engine: the CLI's own work (options, output,
    files, errors) in the fast tier. What the model says is tested on the real model elsewhere."""
    from edgeqwen import EdgeQwen
    from edgeqwen.cli import options

    from fake_engine import FakeEngine

    def load(model, *, n_ctx=None, prompts_dir=None, router="llm", **ignored):
        return EdgeQwen(engine=FakeEngine(n_ctx or 2048), prompts_dir=prompts_dir, router=router, prefix_cache=False)

    monkeypatch.setattr(options, "load_model", load)
    return _invoker({"EDGEQWEN_MODEL": str(NO_MODEL)})
