"""`edgeqwen serve`: an OpenAI-compatible local HTTP server and a one-page UI (optional extra:
`pip install edgeqwen[serve]`).

Nothing is imported here, so `import edgeqwen.server` works without the extra installed. One job per
module: the routes and `serve()` in `app`, settings in `config`, error bodies in `errors`, the API
key in `auth`, the OpenAI chat mapping in `openai`, SSE in `sse`, request bodies in `schemas`, the
model work in `service`, the inference queue in `worker`, and a test launcher in `launch`.
"""
