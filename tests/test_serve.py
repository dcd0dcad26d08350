"""`aspd serve`: a real server in a subprocess (tiny random Llama) called with the openai client and httpx.

The test model's end-of-turn row of the output head is zeroed, so greedy answers run to max_tokens: lengths
(and so timings of "slow" requests) are deterministic. Paths the random model never takes (a parallel group)
are checked in-process with an engine that forces a group at the start of every answer.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from serverutil import running_server

from aspd.engine import HybridEngine, Limits, SamplingParams
from aspd.markup import render
from aspd.sample import end_of_turn_ids
from aspd.serve.worker import EventLog, StopCutter
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

MODEL_ID = "tiny-llama"
CONTEXT = 512  # max_position_embeddings of the tiny model
SLOW = 400  # max_tokens of a "slow" request: a few seconds of decoding on 2 CPU cores


def make_model(folder: Path) -> None:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    with torch.no_grad():  # logit 0 for end-of-turn: a random model's greedy argmax never picks it
        for i in {*end_of_turn_ids(tok), tok.eos_token_id}:
            model.get_output_embeddings().weight[i] = 0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


class Server:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path, folder: Path):
        self.url, self.proc, self.log, self.folder = url, proc, log, folder

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)

    def health(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/health", timeout=5)
        assert r.status_code == 200
        return r.json()

    def post(self, path: str, body: Any, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    folder = root / MODEL_ID
    make_model(folder)
    log = root / "server.log"
    with running_server(folder, log, max_queue=1, log_level="info", timeout=60) as (url, proc):
        yield Server(url, proc, log, folder)


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": "Give three tips."}], "max_tokens": 8,
            "temperature": 0, **kw}


# ---------------------------------------------------------------------------------------------- happy paths


def test_models_and_health(server: Server) -> None:
    ids = [m.id for m in server.client().models.list().data]
    assert ids == [MODEL_ID]
    h = server.health()
    assert h["status"] == "ok" and h["model"] == MODEL_ID and h["max_queue"] == 1


def test_chat_non_streaming(server: Server) -> None:
    raw = server.client().chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Give three tips."}], max_tokens=8, temperature=0)
    c = raw.parse()
    body = json.loads(raw.text)
    assert c.object == "chat.completion" and c.model == MODEL_ID
    assert c.choices[0].message.role == "assistant" and c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 8
    assert c.usage.total_tokens == c.usage.prompt_tokens + 8
    ext = body["aspd"]
    assert ext["mode"] == "hybrid" and ext["stats"]["tokens"] == 8 and ext["stats"]["groups"] == 0
    assert ext["markup"] == c.choices[0].message.content  # no group: the markup is the text
    assert isinstance(ext["raw"], str) and ext["partial"] is False
    assert c.model_extra["aspd"] == ext  # the openai client keeps unknown fields too


def test_chat_streaming_equals_non_streaming(server: Server) -> None:
    client = server.client()
    full = client.chat.completions.create(**chat_body(max_tokens=12))
    chunks = list(client.chat.completions.create(**chat_body(max_tokens=12), stream=True))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == full.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 12
    assert last.model_extra["aspd"]["stats"]["tokens"] == 12


def test_stream_ends_with_done_and_include_usage(server: Server) -> None:
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30,
                      json=chat_body(stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    usage_only = json.loads(lines[-2].removeprefix("data: "))
    assert usage_only["choices"] == [] and usage_only["usage"]["completion_tokens"] == 8


def test_completions_raw_prompt(server: Server) -> None:
    client = server.client()
    full = client.completions.create(model=MODEL_ID, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    assert full.usage.prompt_tokens == len(tiny_tokenizer()("The quick brown fox")["input_ids"])  # no template
    chunks = list(client.completions.create(model=MODEL_ID, prompt="The quick brown fox", max_tokens=6,
                                            temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6
    ids = client.completions.create(model=MODEL_ID, prompt=[5, 6, 7], max_tokens=2, temperature=0)
    assert ids.usage.prompt_tokens == 3


def test_model_may_be_named_by_its_path(server: Server) -> None:
    c = server.client().chat.completions.create(**{**chat_body(), "model": str(server.folder)})
    assert c.model == MODEL_ID


def test_seed_reproduces_sampling(server: Server) -> None:
    client = server.client()
    runs = [client.chat.completions.create(**chat_body(temperature=1.0, top_p=0.9, seed=7, max_tokens=10,
                                                       extra_body={"top_k": 50, "repetition_penalty": 1.1}))
            .choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]


def test_stop_string_cuts_text_and_generation(server: Server) -> None:
    client = server.client()
    full = client.completions.create(model=MODEL_ID, prompt="Paris is", max_tokens=16, temperature=0)
    text = full.choices[0].text
    # A stop string from the first half: the generation must end well before max_tokens.
    stop = next(p for p in (text[i : i + 2] for i in range(3, len(text) // 2)) if p.strip() and "\ufffd" not in p)
    want = text[: text.index(stop)]
    raw = client.completions.with_raw_response.create(model=MODEL_ID, prompt="Paris is", max_tokens=16,
                                                      temperature=0, stop=[stop, "never-there"])
    cut, body = raw.parse(), json.loads(raw.text)
    assert cut.choices[0].text == want and cut.choices[0].finish_reason == "stop"
    assert body["aspd"]["partial"] is True and cut.usage.completion_tokens < 16  # generation stopped early
    chunks = list(client.completions.create(model=MODEL_ID, prompt="Paris is", max_tokens=16, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_aspd_extension_fields(server: Server) -> None:
    client = server.client()
    r = client.chat.completions.create(**chat_body(), extra_body={"aspd": {"mode": "serial", "max_groups": 0}})
    assert r.model_extra["aspd"]["mode"] == "serial"
    chunks = list(client.chat.completions.create(**chat_body(), stream=True,
                                                 extra_body={"aspd": {"branch_deltas": True}}))
    ext = [ch.model_extra["aspd"] for ch in chunks[1:-1] if "aspd" in ch.model_extra]
    assert len(ext) == 8 and all(e["stream"] == "main" for e in ext)
    # The main stream's own text is the content (bar a split character the reading view flushes at the end).
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks).startswith("".join(e["delta"] for e in ext))


# ---------------------------------------------------------------------------------------------- bad input

LONG_PROMPT = [7] * (CONTEXT + 5)

BAD = [
    ("invalid json", "/v1/chat/completions", b'{"model": "tiny-llama", "messages": [', 400, None),
    ("not an object", "/v1/chat/completions", [1, 2], 400, None),
    ("missing messages", "/v1/chat/completions", {"model": MODEL_ID}, 400, "messages"),
    ("empty messages", "/v1/chat/completions", chat_body(messages=[]), 400, "messages"),
    ("empty content", "/v1/chat/completions", chat_body(messages=[{"role": "user", "content": ""}]), 400,
     "messages.0.content"),
    ("messages wrong type", "/v1/chat/completions", chat_body(messages="hi"), 400, "messages"),
    ("bad role", "/v1/chat/completions", chat_body(messages=[{"role": "robot", "content": "x"}]), 400, None),
    ("temperature string", "/v1/chat/completions", chat_body(temperature="0.5"), 400, "temperature"),
    ("temperature negative", "/v1/chat/completions", chat_body(temperature=-0.1), 400, "temperature"),
    ("top_p zero", "/v1/chat/completions", chat_body(top_p=0), 400, "top_p"),
    ("top_p above one", "/v1/chat/completions", chat_body(top_p=1.5), 400, "top_p"),
    ("n=2", "/v1/chat/completions", chat_body(n=2), 400, "n"),
    ("max_tokens zero", "/v1/chat/completions", chat_body(max_tokens=0), 400, "max_tokens"),
    ("max_tokens string", "/v1/chat/completions", chat_body(max_tokens="10"), 400, "max_tokens"),
    ("stream not bool", "/v1/chat/completions", chat_body(stream="yes"), 400, "stream"),
    ("empty stop", "/v1/chat/completions", chat_body(stop=[""]), 400, "stop"),
    ("missing model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ("unknown model", "/v1/chat/completions", chat_body(model="gpt-4o"), 404, "model"),
    ("bad aspd mode", "/v1/chat/completions", chat_body(aspd={"mode": "fast"}), 400, "aspd.mode"),
    ("unknown aspd field", "/v1/chat/completions", chat_body(aspd={"branches": 3}), 400, "aspd.branches"),
    ("prompt over context", "/v1/completions", {"model": MODEL_ID, "prompt": LONG_PROMPT}, 400, "prompt"),
    ("token id out of vocab", "/v1/completions", {"model": MODEL_ID, "prompt": [10**9]}, 400, "prompt"),
    ("two prompts", "/v1/completions", {"model": MODEL_ID, "prompt": ["a", "b"]}, 400, "prompt"),
    ("unknown route", "/v1/nothing", {}, 404, None),
]


@pytest.mark.parametrize("name,path,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_answered_in_openai_shape(server: Server, name: str, path: str, body: Any, status: int,
                                               param: str | None) -> None:
    if isinstance(body, bytes):
        r = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"},
                       timeout=10)
    else:
        r = server.post(path, body, timeout=10)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param
    assert server.health()["status"] == "ok"


def test_openai_client_raises_typed_errors(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(**chat_body(model="nope"))
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        client.completions.create(model=MODEL_ID, prompt=LONG_PROMPT)
    assert br.value.code == "context_length_exceeded"


def test_huge_max_tokens_is_clamped_to_the_context(server: Server) -> None:
    prompt = [7] * (CONTEXT - 10)
    r = server.post("/v1/completions", {"model": MODEL_ID, "prompt": prompt, "max_tokens": 10**12,
                                        "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == CONTEXT


def test_client_disconnect_mid_stream_frees_the_model(server: Server) -> None:
    t0 = time.monotonic()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30,
                      json=chat_body(max_tokens=SLOW, stream=True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # The connection is closed here; the model must stop at its next token, long before SLOW tokens.
    deadline = time.monotonic() + 20
    while "cancelled (client disconnected)" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    while server.health()["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    freed = time.monotonic() - t0
    t1 = time.monotonic()
    quarter = server.client().chat.completions.create(**chat_body(max_tokens=SLOW // 4))
    assert quarter.usage.completion_tokens == SLOW // 4
    # The whole SLOW request would have taken over 4x as long as this quarter one.
    assert freed < 2 * (time.monotonic() - t1) + 0.5, freed


def test_server_still_serves_after_bad_input(server: Server) -> None:
    server.post("/v1/chat/completions", {"model": MODEL_ID, "messages": None}, timeout=10)
    c = server.client().chat.completions.create(**chat_body())
    assert c.usage.completion_tokens == 8 and server.health()["status"] == "ok"


def test_queue_full_answers_503_with_retry_after(server: Server) -> None:
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def call() -> None:
        r = server.post("/v1/chat/completions", chat_body(max_tokens=SLOW // 2), timeout=60)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    seen_busy, slowest = False, 0.0
    while any(t.is_alive() for t in threads):  # health is answered by the event loop while the model works
        t0 = time.monotonic()
        seen_busy |= server.health()["running"]
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)
    for t in threads:
        t.join(60)
    assert seen_busy and slowest < 1.0
    codes = sorted(r.status_code for r in results)
    assert len(codes) == 4 and codes.count(503) >= 1 and codes.count(200) >= 1, codes
    busy = next(r for r in results if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["error"]["code"] == "queue_full"
    assert server.health()["waiting"] == 0


# ---------------------------------------------------------------------------------------------- in-process


class ForcedGroupEngine(HybridEngine):
    """Every answer starts with a forced group, so that branch paths run with a random model."""

    titles = ("Diet", "Sleep", "Work")

    def generate(self, prompt: Any, **kw: Any) -> Any:
        c = self.ctrl
        prefix: list[int] = []
        for t in self.titles:
            prefix += [c.title, *text_ids(self.tokenizer, t), c.title_end]
        kw.setdefault("answer_prefix", [*prefix, c.para])
        return super().generate(prompt, **kw)


@pytest.fixture(scope="module")
def forced() -> ForcedGroupEngine:
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    return ForcedGroupEngine(model, tok)


def test_event_log_rebuilds_the_generation(forced: ForcedGroupEngine) -> None:
    for sp in (SamplingParams(), SamplingParams(temperature=1.0, seed=3)):
        ids = forced.prompt_ids("Give tips.")
        events = EventLog(forced, len(ids))
        g = forced.generate(ids, sampling=sp, limits=Limits(max_new_tokens=40, max_branch_tokens=8),
                            on_event=events.push)
        doc, raw_ids, stats = events.finish(g.text)
        assert doc == g.doc
        eot = 1 if g.finish_reason == "stop" else 0  # end of turn is never an event
        assert raw_ids == g.answer_ids[: len(g.answer_ids) - eot]
        assert (stats.tokens + eot, stats.parallel_tokens, stats.branches, stats.forwards) == (
            g.stats.tokens, g.stats.parallel_tokens, g.stats.branches, g.stats.forwards)


def test_stop_cutter_holds_back_partial_matches() -> None:
    c = StopCutter(["END", "xy"])
    assert c.push("abcE") == "abc"
    assert c.push("N") == ""
    assert c.push("Dzz") == "" and c.hit
    c = StopCutter(["END"])
    assert c.push("aE") == "a" and c.push("b") == "Eb" and c.flush() == ""
    c = StopCutter(["END"])
    assert c.push("aEN") == "a" and c.flush() == "EN"


def test_branch_deltas_stream_a_group(forced: ForcedGroupEngine) -> None:
    from fastapi.testclient import TestClient

    from aspd.serve.app import ServedModel, create_app

    app = create_app(ServedModel(forced, "forced", context=CONTEXT), max_queue=2)
    body = chat_body(model="forced", max_tokens=30, aspd={"max_branch_tokens": 8, "branch_deltas": True})
    with TestClient(app) as client:
        full = client.post("/v1/chat/completions", json=body).json()
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    ext = full["aspd"]
    assert ext["stats"]["groups"] == 1 and ext["stats"]["abn"] == 3
    assert ext["markup"].startswith("<branchgroup>") and 'title="Sleep"' in ext["markup"]
    assert "<|branch|>" in ext["raw"]
    content = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert content == full["choices"][0]["message"]["content"]
    events = [ch["aspd"] for ch in chunks if "event" in ch.get("aspd", {})]
    assert [e["event"] for e in events] == ["open", "close"]
    assert events[0]["titles"] == list(ForcedGroupEngine.titles)
    assert events[0]["streams"] == ["g0b0", "g0b1", "g0b2"]
    streams = {ch["aspd"]["stream"] for ch in chunks if "delta" in ch.get("aspd", {})}
    assert {"g0b0", "g0b1", "g0b2"} <= streams
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert final["usage"] == full["usage"]
    assert final["aspd"]["markup"] == render(forced.generate(
        forced.prompt_ids("Give three tips."), limits=Limits(max_new_tokens=30, max_branch_tokens=8)).doc)


class FailingEngine(HybridEngine):
    def generate(self, prompt: Any, **kw: Any) -> Any:
        raise RuntimeError("boom: secret internals")


def test_engine_failure_is_a_500_without_traceback(forced: ForcedGroupEngine) -> None:
    from fastapi.testclient import TestClient

    from aspd.serve.app import ServedModel, create_app

    app = create_app(ServedModel(FailingEngine(forced.model, forced.tokenizer), "bad", context=CONTEXT))
    body = chat_body(model="bad")
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "boom" not in r.text and "Traceback" not in r.text
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        assert json.loads(lines[-2][6:])["error"]["type"] == "server_error" and lines[-1] == "data: [DONE]"
        assert client.get("/health").json()["status"] == "ok"
