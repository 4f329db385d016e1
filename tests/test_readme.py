"""The README's Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_readme_python_example_runs(model_path, tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "EDGEQWEN_MODEL": str(model_path)},
    )
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("negative 负面 negative")


def test_public_names_load_on_first_use():
    # `import edgeqwen` (and so the `edgeqwen` command's entry point) loads none of llama.cpp, numpy or
    # pydantic; every name of __all__ still imports, from the module that defines it.
    code = """
import sys
import edgeqwen
heavy = {"llama_cpp", "numpy", "pydantic", "typer"} & set(sys.modules)
assert not heavy, heavy
from edgeqwen import *
assert all(name in globals() for name in edgeqwen.__all__)
assert set(edgeqwen.__all__) <= set(dir(edgeqwen))
from edgeqwen import EdgeQwen, EdgeQwenError, load_roles
from edgeqwen.api import EdgeQwen as defined
assert EdgeQwen is defined and edgeqwen.EdgeQwen is defined
try:
    edgeqwen.no_such_name
except AttributeError as error:
    assert "no_such_name" in str(error)
else:
    raise AssertionError("no AttributeError")
print(sorted(edgeqwen.__all__))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "EdgeQwen" in done.stdout and "load_roles" in done.stdout
