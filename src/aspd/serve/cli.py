"""`aspd serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) for one model."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aspd.cli import CLIError
from aspd.engine.cli import DTYPES, add_engine_arg

DEFAULT_MAX_BATCH, DEFAULT_MAX_SLOTS = 32, 1 << 15  # == aspd.engine.batch's; kept here so --help skips torch

API_KEY_ENV = "ASPD_API_KEY"


def register(sub: Any) -> None:
    from aspd.layout import MaskMode, PosMode

    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="OpenAI-compatible server: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, "
        "GET /health. Up to --max-batch requests run at once on one model thread, every running request's "
        "streams in one forward per step (continuous batching); extra ones wait in a bounded queue and get "
        "503 + Retry-After when it is full.",
    )
    p.add_argument("--model", required=True, help="registry name (see `aspd models list`) or local HF folder")
    p.add_argument("--served-model-name", default=None,
                   help="model id in the API (default: the --model name or folder name)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port (printed)")
    p.add_argument("--api-key", metavar="KEY", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (401 otherwise); "
                        f"default: ${API_KEY_ENV} if set, else no key. Prefer the variable: a flag is visible "
                        f"to other users in the process list")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests allowed to wait behind the running ones before 503 (default 16)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"requests decoded at once, sharing each forward (default {DEFAULT_MAX_BATCH}; 1: one at a "
                        "time)")
    p.add_argument("--max-cache-tokens", type=int, default=DEFAULT_MAX_SLOTS,
                   help=f"KV cache slots the running requests may reserve together (each its prompt and "
                        f"worst-case answer); a request that does not fit waits (default {DEFAULT_MAX_SLOTS})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="default: bf16 on a capable GPU, else fp32")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention backend (default sdpa)")
    add_engine_arg(p)
    p.add_argument("--mask-mode", default=None, choices=[x.value for x in MaskMode],
                   help="branch visibility (default: from the model's aspd.json)")
    p.add_argument("--pos-mode", default=None, choices=[x.value for x in PosMode],
                   help="branch position ids (default: from the model's aspd.json)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def load_served(args: argparse.Namespace) -> Any:
    """Load the model; a plain model gets the control tokens (mean-initialised rows) and answers serially."""
    from transformers.utils import logging as hf_logging

    from aspd.engine.core import HybridEngine
    from aspd.loading import model_folder
    from aspd.serve.app import ServedModel, context_length, sampling_defaults

    hf_logging.set_verbosity_error()
    name = args.model
    try:
        folder = model_folder(name)
        engine = HybridEngine.from_pretrained(str(folder), device=args.device, dtype=args.dtype, attn=args.attn,
                                              mask_mode=args.mask_mode, pos_mode=args.pos_mode,
                                              engine=args.engine)
    except CLIError:
        raise
    except Exception as e:  # one line for the user; the library raises as usual
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"cannot load model {name!r}: {detail}") from None
    if not engine.is_aspd_model:
        logging.getLogger("aspd.serve").warning(
            "%s is not an ASPD model (no control tokens): added them; it will answer serially", name)
    model = engine.model
    model_id = args.served_model_name or Path(name).name or name
    return ServedModel(engine, model_id, aliases={name, str(folder)}, context=context_length(model),
                       defaults=sampling_defaults(model))


def _bind(host: str, port: int) -> socket.socket:
    """Bound but not listening: a busy port fails before the slow model load, and clients get 'connection
    refused' (not a hang) until the model is ready, when uvicorn starts listening."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CLIError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else $ASPD_API_KEY, else None (no key). A set key must be something a client can send."""
    source, key = "--api-key", args.api_key
    if key is None:
        source, key = API_KEY_ENV, os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    # Clients send header values in ASCII, with outer whitespace stripped: any other key could never match.
    if not key or not all("!" <= c <= "~" for c in key):
        raise CLIError(f"{source} must be a non-empty string of printable ASCII characters without spaces")
    return key


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from aspd.serve.app import create_app

    if args.max_queue < 0:
        raise CLIError("--max-queue must be >= 0")
    if args.max_batch < 1 or args.max_cache_tokens < 1:
        raise CLIError("--max-batch and --max-cache-tokens must be >= 1")
    if not 0 <= args.port <= 65535:
        raise CLIError("--port must be in [0, 65535]")
    key = api_key(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = _bind(args.host, args.port)  # bind before the slow model load: a busy port fails fast
    served = load_served(args)
    if served.engine.device.type == "cuda":  # compile and capture now, for the whole cache: no stall in a request
        t0 = time.perf_counter()
        served.engine.warm(args.max_cache_tokens, progress=True)
        print(f"aspd serve: decode step compiled and captured in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    app = create_app(served, max_queue=args.max_queue, api_key=key, max_batch=args.max_batch,
                     max_slots=args.max_cache_tokens)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"aspd serve: {served.model_id} on http://{shown}:{port}/v1 (context {served.context}, "
          f"max batch {args.max_batch}, max queue {args.max_queue}, {'API key required' if key else 'no API key'})", file=sys.stderr,
          flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
