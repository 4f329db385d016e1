"""The speed and memory benchmark: same as `edgeqwen bench` (see `--help`)."""

import sys

from edgeqwen.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
