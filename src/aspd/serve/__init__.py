"""OpenAI-compatible HTTP server for the hybrid engine (`aspd serve`).

Endpoints: POST /v1/chat/completions and /v1/completions (streaming or not), GET /v1/models, GET /health.
Extension: a request's `aspd` object picks the decoding mode and limits; responses carry `aspd` stats,
markup and raw token text. One model thread serves the requests with continuous batching (aspd.engine.batch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServedModel", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `aspd --help` imports aspd.serve.cli and should not pay for (or need) FastAPI.
    if name in __all__:
        from aspd.serve import app

        return getattr(app, name)
    raise AttributeError(name)
