"""`edgeqwen serve`: an OpenAI-compatible local HTTP server and a one-page UI (optional extra: `pip install edgeqwen[serve]`).

Nothing is imported here, so `import edgeqwen.server` works without the extra installed; the app
lives in `edgeqwen.server.app` (Starlette + uvicorn), the inference queue in `edgeqwen.server.worker`.
"""
