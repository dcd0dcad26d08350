"""The OpenAI-compatible backend against a fault-injecting HTTP endpoint on a loopback port: retries with
backoff, give-up and fallback to serial data, the reply cache, per-request seeds, and a run killed with
SIGKILL then resumed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from serverutil import LoopbackEndpoint, chat_reply, send_json

from aspd.cli import main
from aspd.pipeline.backends import CallLog, use_log
from aspd.pipeline.backends.openai_compat import OpenAICompatBackend
from aspd.pipeline.rules import split_head

HANG = 2.0  # seconds a "timeout" reply hangs; clients here time out after TIMEOUT
TIMEOUT = 1.0


def auto_markup(answer: str) -> str:
    """What a good rewriter would reply: the first run of >= 2 "- " lines becomes a group."""
    lines = answer.split("\n")
    start = next((i for i in range(len(lines) - 1) if lines[i].startswith("- ") and lines[i + 1].startswith("- ")),
                 None)
    if start is None:
        return "PARALLEL: no"
    end = start
    while end < len(lines) and lines[end].startswith("- "):
        end += 1
    # Heads as the markers check wants them: the marker and first words in the title, the rest in the body.
    heads = [split_head(line) or f"Item {i}" for i, line in enumerate(lines[start:end], 1)]
    branches = [f'<branch title="{h}">{line[len(h):] if line.startswith(h) else line}</branch>'
                for h, line in zip(heads, lines[start:end], strict=True)]
    marked = [*lines[:start], "<branchgroup>", *branches, "</branchgroup>", *lines[end:]]
    return "PARALLEL: yes\n<<<ANSWER\n" + "\n".join(marked) + "\nANSWER>>>"


class FakeLLM:
    """A chat-completions endpoint that plays scripted faults, then answers like a cooperative model.

    `actions` are consumed one per request: timeout (hang past the client timeout), 500, 503, 400,
    garbage (200 with a non-JSON body), nochoices (200, JSON without choices), drop (close the connection
    without answering), ok. When empty, `default` applies.
    """

    def __init__(self) -> None:
        self.actions: deque[str] = deque()
        self.default = "ok"
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []  # each request's Authorization header
        self.lock = threading.Lock()
        self.endpoint = LoopbackEndpoint(self.on_post)
        self.url = self.endpoint.url

    def on_post(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(body)
            self.auth.append(handler.headers.get("Authorization"))
            action = self.actions.popleft() if self.actions else self.default
            delay = self.delay
        if action == "timeout":
            time.sleep(HANG)
            action = "ok"
        if action == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        time.sleep(delay)
        status, payload = 200, b""
        if action in ("500", "503", "400"):
            status, payload = int(action), json.dumps({"error": {"message": "injected"}}).encode()
        elif action == "garbage":
            payload = b"{this is not json"
        elif action == "nochoices":
            payload = json.dumps({"object": "chat.completion"}).encode()
        else:
            payload = json.dumps(self.reply(body)).encode()
        send_json(handler, status, payload, [("Retry-After", "0")] if status == 503 else [])

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if "PARALLEL: yes" in system:
            original = user.split("<<<ORIGINAL\n", 1)[1].rsplit("\nORIGINAL>>>", 1)[0]
            text = auto_markup(original)
        else:
            text = "VERDICT: true\nREASON: the parts stand alone"
        return chat_reply(body["model"], text,
                          usage={"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110})

    def close(self) -> None:
        self.endpoint.close()


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    f = FakeLLM()
    yield f
    f.close()


def backend(fake: FakeLLM, **kw: Any) -> OpenAICompatBackend:
    opts: dict[str, Any] = dict(timeout=TIMEOUT, retries=6, backoff=0.01, backoff_max=0.05, concurrency=4)
    return OpenAICompatBackend(fake.url, "fake-model", "sk-test", **{**opts, **kw})


async def one_request(be: OpenAICompatBackend, body: dict[str, Any]) -> tuple[str | None, CallLog]:
    log = CallLog()
    use_log(log)
    try:
        return await be.request(body), log
    finally:
        await be.aclose()


JUDGE_BODY = {"model": "fake-model", "messages": [{"role": "system", "content": "judge"},
                                                  {"role": "user", "content": "x"}], "seed": 0}


def test_retries_every_fault_kind_then_succeeds(fake: FakeLLM) -> None:
    fake.actions.extend(["timeout", "500", "garbage", "drop", "nochoices", "503"])
    t0 = time.monotonic()
    text, log = asyncio.run(one_request(backend(fake), JUDGE_BODY))
    assert text is not None and text.startswith("VERDICT: true")
    assert dict(log.failures) == {"timeout": 1, "http_error": 2, "bad_response": 2, "connection_error": 1}
    assert log.calls == 7 and len(fake.requests) == 7
    assert log.prompt_tokens == 100 and log.completion_tokens == 10  # usage of the one good reply only
    assert time.monotonic() - t0 < TIMEOUT + 3  # tiny backoff: no long sleeps


def test_gives_up_after_retries_and_never_retries_a_4xx(fake: FakeLLM) -> None:
    fake.default = "500"
    text, log = asyncio.run(one_request(backend(fake, retries=2), JUDGE_BODY))
    assert text is None and log.failures == {"http_error": 3, "request_failed": 1} and len(fake.requests) == 3
    fake.requests.clear()
    fake.default = "400"
    text, log = asyncio.run(one_request(backend(fake, retries=2), JUDGE_BODY))
    assert text is None and log.failures == {"http_error": 1, "request_failed": 1} and len(fake.requests) == 1


def test_api_key_goes_in_the_authorization_header_and_no_key_sends_none(fake: FakeLLM) -> None:
    for key in ("sk-test", None):
        be = OpenAICompatBackend(fake.url, "fake-model", key, timeout=TIMEOUT)
        text, _ = asyncio.run(one_request(be, {**JUDGE_BODY, "top_k": 7}))
        assert text is not None and text.startswith("VERDICT: true")
    assert fake.auth == ["Bearer sk-test", None]
    assert [b["top_k"] for b in fake.requests] == [7, 7]  # a field the client has no parameter for goes through


def test_backoff_grows_exponentially_with_jitter() -> None:
    be = OpenAICompatBackend("http://unused/v1", "m", backoff=1.0, backoff_max=5.0)
    for attempt, step in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        delays = {be._delay(attempt, None) for _ in range(20)}
        assert all(step / 2 <= d <= step for d in delays) and len(delays) > 1
    assert be._delay(1, 3.0) >= 3.0 and be._delay(1, 100.0) <= 5.0  # Retry-After honoured, capped


def write_inputs(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        if i % 4 == 3:  # some answers with nothing to parallelise
            answer = f"Answer {i} is a single sentence."
        else:
            answer = f"Here is list {i}:\n- first point {i}\n- second point {i}\n- third point {i}\nThat is all."
        rows.append(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answer": answer}))
    path.write_text("\n".join(rows) + "\n")
    return path


def cli(inp: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["transform", "--input", str(inp), "--output", str(out), "--base-url", url, "--model", "fake-model",
            "--api-key", "sk-test", "--timeout", str(TIMEOUT), "--backoff", "0.01", "--backoff-max", "0.05",
            "--no-progress", *extra]


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_pipeline_over_http_with_faults_then_cache(fake: FakeLLM, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_inputs(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache"
    fake.actions.extend(["500", "garbage", "timeout", "drop", "nochoices", "500", "garbage"])
    assert main(cli(inp, out, fake.url, "--cache-dir", str(cache), "--retries", "8")) == 0
    printed = capsys.readouterr().out
    assert "samples: 8 (6 parallel, 2 kept serial)" in printed
    recs = records(out)
    assert sorted(r["id"] for r in recs) == [f"q{i}" for i in range(8)]
    for r in recs:
        assert r["parallel"] is (int(r["id"][1:]) % 4 != 3)
        if r["parallel"]:
            assert r["candidates"][0]["independence"]["groups"][0]["kept"] is True
        else:
            assert r["markup"] == r["answer"]
    s = json.loads(Path(f"{out}.summary.json").read_text())
    failures = dict(s["failures"])
    # A busy machine may add a timeout of its own; the injected faults are all there.
    assert failures.pop("timeout") >= 1
    assert failures == {"http_error": 2, "bad_response": 3, "connection_error": 1}
    failed = sum(s["failures"].values())
    # 8 samples x 3 rewrites + 6 parallel samples x 3 candidates x (1 group + integrity + answer) x 3 votes;
    # identical requests (the fake's 3 candidates are the same text) may be answered by the cache mid-run.
    good = 8 * 3 + 6 * 3 * 3 * 3
    llm = s["llm"]
    assert llm["calls"] == len(fake.requests) and llm["calls"] - failed + llm["cache_hits"] == good
    answered = llm["calls"] - failed
    assert llm["prompt_tokens"] == 100 * answered and llm["completion_tokens"] == 10 * answered
    assert s["acceptance"] == {"candidates_in": 24, "passed_checks": 18, "passed_independence": 18,
                               "passed_integrity": 18, "passed_answer": 18}
    assert s["drops"] == {"no_parallel": 6}
    # Same settings again, into a new output: every reply comes from the cache, nothing is sent.
    fake.requests.clear()
    out2 = tmp_path / "out2.jsonl"
    assert main(cli(inp, out2, fake.url, "--cache-dir", str(cache))) == 0
    s2 = json.loads(Path(f"{out2}.summary.json").read_text())
    assert fake.requests == [] and s2["llm"]["calls"] == 0 and s2["llm"]["cache_hits"] == good
    assert {r["id"]: r["markup"] for r in records(out2)} == {r["id"]: r["markup"] for r in recs}


def test_requests_differ_by_seed_and_sampling(fake: FakeLLM, tmp_path: Path) -> None:
    inp = write_inputs(tmp_path / "in.jsonl", 1)
    out = tmp_path / "out.jsonl"
    assert main(cli(inp, out, fake.url, "-n", "3", "-k", "2", "--temperature", "0.9", "--judge-temperature", "0.3",
                    "--seed", "10", "--max-tokens", "500", "--no-cache", "--extra-body", '{"top_k": 5}')) == 0
    assert {b["top_k"] for b in fake.requests} == {5}
    rewrites = [b for b in fake.requests if "PARALLEL: yes" in b["messages"][0]["content"]]
    assert sorted(b["seed"] for b in rewrites) == [10, 11, 12]
    assert {b["temperature"] for b in rewrites} == {0.9} and {b["max_tokens"] for b in rewrites} == {500}
    judges = [b for b in fake.requests if b not in rewrites]
    # The fake's 3 candidates are the same text: identical judge requests in flight share one call.
    distinct = {json.dumps(b, sort_keys=True) for b in judges}
    assert len(distinct) == 3 * 2 and len(judges) <= 3 * 3 * 2 and {b["seed"] for b in judges} == {10, 11}
    assert {b["temperature"] for b in judges} == {0.3} and all("max_tokens" not in b for b in judges)
    assert not Path(f"{out}.cache").exists()


def test_backend_down_keeps_every_sample_serial_then_retry_failed(fake: FakeLLM, tmp_path: Path) -> None:
    inp = write_inputs(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    fake.default = "500"
    assert main(cli(inp, out, fake.url, "--retries", "1")) == 0
    recs = records(out)
    assert len(recs) == 4 and all(not r["parallel"] and r["markup"] == r["answer"] for r in recs)
    assert all("backend failures" in r["stats"]["outcome"] for r in recs)
    s = json.loads(Path(f"{out}.summary.json").read_text())
    assert s["failures"] == {"http_error": 24, "request_failed": 12} and s["parallel_samples"] == 0
    # The endpoint is back: redo only the samples whose calls gave up.
    fake.default = "ok"
    assert main(cli(inp, out, fake.url, "--resume", "--retry-failed")) == 0
    recs = records(out)
    assert sorted(r["id"] for r in recs) == ["q0", "q1", "q2", "q3"]
    assert [r["parallel"] for r in sorted(recs, key=lambda r: r["id"])] == [True, True, True, False]


def test_kill_9_then_resume(fake: FakeLLM, tmp_path: Path) -> None:
    n = 40
    inp = write_inputs(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    fake.delay = 0.05  # slow replies: the kill lands mid-run
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = cli(inp, out, fake.url, "-n", "2", "-k", "1", "--workers", "3")
    proc = subprocess.Popen([sys.executable, "-m", "aspd.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_bytes().count(b"\n") >= 5):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    data = out.read_bytes()
    done_before = data.count(b"\n")
    assert 5 <= done_before < n, "the run finished before the kill: slow the replies down"
    for line in data.split(b"\n")[:done_before]:
        json.loads(line)  # every complete line is whole
    # Without --resume the existing output is refused; with it, the run completes.
    assert main(cli(inp, out, fake.url, "-n", "2", "-k", "1")) == 2
    fake.delay = 0.0
    assert main(cli(inp, out, fake.url, "-n", "2", "-k", "1", "--resume")) == 0
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == n and sorted(ids) == sorted(f"q{i}" for i in range(n))
    s = json.loads(Path(f"{out}.summary.json").read_text())
    assert s["samples"] == n and s["this_run"]["already_done"] == done_before
    assert s["this_run"]["processed"] == n - done_before
    assert s["parallel_samples"] == sum(1 for i in range(n) if i % 4 != 3)
