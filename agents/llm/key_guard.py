"""The ASGI middleware that asks for the API key on every route of a vLLM server.

vLLM's own key check covers /v1, /v2, /inference and /cohere only, not /invocations (which runs
completions), /tokenize or /metrics. vLLM imports this module in its own environment
(.venv-vllm, `--middleware agents.llm.key_guard.KeyGuard`), so it uses the standard library only.
"""
from __future__ import annotations

import hashlib
import os
import secrets


class KeyGuard:
    """Every HTTP and WebSocket request, on every path, needs `Authorization: Bearer $VLLM_API_KEY`
    (OPTIONS, a CORS preflight, excepted as in vLLM's own check); refuses to start without a key.
    The key is compared by its SHA-256 digest in constant time."""

    def __init__(self, app):
        key = os.environ.get("VLLM_API_KEY")
        if not key:
            raise RuntimeError("KeyGuard needs the key in VLLM_API_KEY")
        self.app = app
        self.digest = hashlib.sha256(key.encode()).digest()

    def allowed(self, headers) -> bool:
        given = b""
        for name, value in headers or ():
            if name.lower() == b"authorization":
                given = value
        scheme, _, token = given.partition(b" ")
        match = secrets.compare_digest(hashlib.sha256(token).digest(), self.digest)
        return scheme.lower() == b"bearer" and match

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS" \
                or self.allowed(scope.get("headers")):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = b'{"error": "Unauthorized"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
