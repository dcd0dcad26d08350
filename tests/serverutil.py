"""Start a real `aspd serve` subprocess on a free loopback port and wait until it is healthy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def running_server(folder: Path, log: Path, *, max_queue: int, log_level: str = "info",
                   timeout: float = 60) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (base URL without /v1, process); the server is terminated on exit."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "aspd.cli", "serve", "--model", str(folder), "--host", "127.0.0.1",
           "--port", "0", "--max-queue", str(max_queue), "--log-level", log_level]
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
