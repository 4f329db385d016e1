"""`python -m edgeqwen`: the same entry point as the `edgeqwen` console script."""

from .console import main

main()
