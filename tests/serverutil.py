"""Real servers for the HTTP tests: an `aspd serve` subprocess, and an in-process loopback JSON endpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


@contextmanager
def running_server(folder: Path, log: Path, *, max_queue: int, log_level: str = "info", timeout: float = 60,
                   api_key: str | None = None, extra: Iterable[str] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (base URL without /v1, process); the server is terminated on exit. `api_key` goes in through
    $ASPD_API_KEY (never inherited from the caller's environment). `extra`: more `aspd serve` arguments."""
    env = {k: v for k, v in os.environ.items() if k != "ASPD_API_KEY"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if api_key is not None:
        env["ASPD_API_KEY"] = api_key
    cmd = [sys.executable, "-m", "aspd.cli", "serve", "--model", str(folder), "--host", "127.0.0.1",
           "--port", "0", "--max-queue", str(max_queue), "--log-level", log_level, *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            assert proc.poll() is None, f"server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.2)
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not healthy:\n{log.read_text()}"
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Loopback(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops connects under a burst (seen as timeouts)
    daemon_threads = True


class LoopbackEndpoint:
    """An HTTP server on a free loopback port; every POST body (JSON) goes to `on_post(handler, body)`, which
    answers through `send_json` (or drops the connection itself). `url` ends in /v1."""

    def __init__(self, on_post: Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                on_post(self, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        self.server = _Loopback(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: bytes,
              headers: Iterable[tuple[str, str]] = ()) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for k, v in headers:
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(payload)
    except OSError:
        pass  # the client gave up (timeout): nothing to answer


def chat_reply(model: str, text: str, **extra: Any) -> dict[str, Any]:
    """A minimal chat.completion body carrying `text`."""
    return {"id": "x", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            **extra}
