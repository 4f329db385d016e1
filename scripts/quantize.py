#!/usr/bin/env python3
"""Behind `make quantize`: the same as `edgeqwen quantize` (fetch, convert without torch, quantize, verify)."""

import sys

from edgeqwen.cli import app

if __name__ == "__main__":
    sys.exit(app(["quantize", *sys.argv[1:]]))
