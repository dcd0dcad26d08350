"""`aspd serve`: a real server in a subprocess (tiny random Llama) called with the openai client and httpx.

The server requires an API key (given through $ASPD_API_KEY), so every test also goes through the key check.

The test model's end-of-turn row of the output head is zeroed, so greedy answers run to max_tokens: lengths
(and so timings of "slow" requests) are deterministic. Paths the random model never takes (a parallel group)
are checked in-process with an engine that forces a group at the start of every answer; so is the property
test that throws random JSON at every request field.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_origin

import httpx
import openai
import pytest
import torch
from hypothesis import strategies as st
from pydantic import BaseModel
from serverutil import running_server

from aspd.engine import HybridEngine, Limits, SamplingParams
from aspd.markup import render
from aspd.sample import end_of_turn_ids
from aspd.serve.worker import EventLog, StopCutter
from aspd.testing import tiny_model, tiny_tokenizer
from aspd.tokens import add_control_tokens, text_ids

MODEL_ID = "tiny-llama"
API_KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CONTEXT = 512  # max_position_embeddings of the tiny model
SLOW = 400  # max_tokens of a "slow" request: a few seconds of decoding on 2 CPU cores
MAX_BATCH = 2  # requests the test server decodes at once


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

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def health(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/health", timeout=5)  # the one route open without the key
        assert r.status_code == 200
        return r.json()

    def post(self, path: str, body: Any, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=AUTH, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    folder = root / MODEL_ID
    make_model(folder)
    log = root / "server.log"
    with running_server(folder, log, max_queue=1, log_level="info", timeout=60, api_key=API_KEY,
                        extra=["--max-batch", str(MAX_BATCH)]) as (url, proc):
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
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30, headers=AUTH,
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
    """The same seed gives the same sample, another seed another one (greedy decoding would pass only the first)."""
    client = server.client()

    def sample(seed: int) -> str:
        return client.chat.completions.create(**chat_body(
            temperature=1.0, top_p=0.9, seed=seed, max_tokens=10,
            extra_body={"top_k": 50, "repetition_penalty": 1.1})).choices[0].message.content

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c


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
    chunks = list(client.chat.completions.create(**chat_body(), stream=True,
                                                 extra_body={"aspd": {"branch_deltas": True}}))
    ext = [ch.model_extra["aspd"] for ch in chunks[1:-1] if "aspd" in ch.model_extra]
    assert len(ext) == 8 and all(e["stream"] == "main" for e in ext)
    # The main stream's own text is the content (bar a split character the reading view flushes at the end).
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks).startswith("".join(e["delta"] for e in ext))


def test_sot_answers_as_the_engine_does(server: Server) -> None:
    """A `sot` request (chat, and a text completion) over HTTP is `engine.generate(..., mode="sot")` of its
    question: text, finish reason, token count, markup and raw trace."""
    engine = HybridEngine.from_pretrained(str(server.folder))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Give three tips."}]
    chat = server.post("/v1/chat/completions", chat_body(messages=messages, max_tokens=24, aspd={"mode": "sot"}))
    text = server.post("/v1/completions", {"model": MODEL_ID, "prompt": "Name two colours.", "max_tokens": 16,
                                           "temperature": 0, "aspd": {"mode": "sot"}})
    for r, question, budget in ((chat, messages, 24), (text, "Name two colours.", 16)):
        assert r.status_code == 200, r.text
        body = r.json()
        ref = engine.generate(question, mode="sot", sampling=SamplingParams(temperature=0.0),
                              limits=Limits(max_new_tokens=budget))
        choice = body["choices"][0]
        assert (choice["message"]["content"] if "message" in choice else choice["text"]) == ref.text
        assert choice["finish_reason"] == ref.finish_reason
        ext = body["aspd"]
        assert ext["mode"] == "sot" and ext["stats"]["tokens"] == ref.stats.tokens == body["usage"]["completion_tokens"]
        assert ext["markup"] == ref.markup_text() and ext["raw"] == ref.raw and "[skeleton]" in ext["raw"]


# ---------------------------------------------------------------------------------------------- bad input

LONG_PROMPT = [7] * (CONTEXT + 5)
DEEP = 100_000  # brackets: far past Python's recursion limit


def raw_json(body: dict[str, Any], **literals: str) -> bytes:
    """`body` as JSON bytes (non-ASCII escaped, as JSON allows even for a lone surrogate), plus fields given
    as literal JSON text (Infinity, 1e400, deep nesting: what json.dumps cannot or will not write)."""
    body = {k: v for k, v in body.items() if k not in literals}
    text = json.dumps(body)[:-1] + "".join(f', "{k}": {v}' for k, v in literals.items()) + "}"
    return text.encode()

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
    # Numbers that are valid JSON but break the sampler: named in the error, never a 500.
    ("temperature huge", "/v1/chat/completions", chat_body(temperature=1e300), 400, "temperature"),
    ("temperature Infinity", "/v1/chat/completions", raw_json(chat_body(), temperature="Infinity"), 400,
     "temperature"),
    ("top_p NaN", "/v1/chat/completions", raw_json(chat_body(), top_p="NaN"), 400, "top_p"),
    ("repetition_penalty near zero", "/v1/chat/completions", chat_body(repetition_penalty=1e-300), 400,
     "repetition_penalty"),
    ("repetition_penalty 1e400 (inf)", "/v1/completions",
     raw_json({"model": MODEL_ID, "prompt": "a", "max_tokens": 2}, repetition_penalty="1e400"), 400,
     "repetition_penalty"),
    ("seed over 64 bits", "/v1/chat/completions", chat_body(temperature=1.0, seed=2**64), 400, "seed"),
    ("seed under -2**63", "/v1/completions", {"model": MODEL_ID, "prompt": "a", "temperature": 1.0,
                                              "seed": -(2**63) - 1}, 400, "seed"),
    ("deeply nested body", "/v1/chat/completions", raw_json(chat_body(), tools="[" * DEEP + "]" * DEEP), 400,
     None),
    ("deeply nested prompt", "/v1/completions",
     raw_json({"model": MODEL_ID}, prompt="[" * DEEP + "]" * DEEP), 400, None),
    ("lone surrogate in prompt", "/v1/completions", raw_json({"model": MODEL_ID, "prompt": "a\ud800b"}), 400,
     "prompt"),
    ("lone surrogate in content", "/v1/chat/completions",
     raw_json(chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}])), 400,
     "messages.0.content"),
    ("stop of no accepted type", "/v1/chat/completions", chat_body(stop=5), 400, "stop"),
    # Per-mode limits (as `aspd generate` refuses --stream with pasta): a PASTA or SoT text is complete only
    # at the end, and this model has no PASTA tags.
    ("sot stream", "/v1/chat/completions", chat_body(stream=True, aspd={"mode": "sot"}), 400, "stream"),
    ("pasta stream", "/v1/completions", {"model": MODEL_ID, "prompt": "a", "stream": True, "aspd": {"mode": "pasta"}},
     400, "stream"),
    ("sot stop", "/v1/chat/completions", chat_body(stop=["x"], aspd={"mode": "sot"}), 400, "stop"),
    ("sot token ids", "/v1/completions", {"model": MODEL_ID, "prompt": [5, 6], "aspd": {"mode": "sot"}}, 400,
     "prompt"),
    ("sot without a user message", "/v1/chat/completions",
     chat_body(messages=[{"role": "system", "content": "Be brief."}], aspd={"mode": "sot"}), 400, "messages"),
]


@pytest.mark.parametrize("name,path,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_answered_in_openai_shape(server: Server, name: str, path: str, body: Any, status: int,
                                               param: str | None) -> None:
    if isinstance(body, bytes):
        r = httpx.post(f"{server.url}{path}", content=body, headers={**AUTH, "content-type": "application/json"},
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


def test_pasta_on_a_model_without_pasta_tags_is_a_400(server: Server) -> None:
    r = server.post("/v1/chat/completions", chat_body(aspd={"mode": "pasta"}), timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "aspd.mode" and "no PASTA tags" in err["message"] and "--format pasta" in err["message"]
    assert server.health()["status"] == "ok"


def test_sot_whose_outline_prompt_outgrows_the_context_is_a_400(server: Server) -> None:
    """A question that fits the context but not inside SoT's outline instructions is refused up front."""
    from aspd.engine.sot import skeleton_messages
    from aspd.sample import prompt_ids

    engine = HybridEngine.from_pretrained(str(server.folder))
    words = 1
    while len(prompt_ids(engine.tokenizer, skeleton_messages("go " * words))) < CONTEXT:
        words += 8
    question = "go " * words
    assert len(engine.prompt_ids(question)) < CONTEXT  # alone it would be accepted
    r = server.post("/v1/chat/completions", chat_body(messages=[{"role": "user", "content": question}],
                                                      aspd={"mode": "sot"}))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages" and "outline" in err["message"]
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
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30, headers=AUTH,
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


def test_tiny_temperature_samples_the_argmax(server: Server) -> None:
    # Dividing float32 logits by 1e-300 overflows; a temperature that small is greedy decoding anyway.
    client = server.client()
    greedy = client.completions.create(model=MODEL_ID, prompt="Paris is", max_tokens=8, temperature=0)
    tiny = client.completions.create(model=MODEL_ID, prompt="Paris is", max_tokens=8, temperature=1e-300, seed=3)
    assert tiny.choices[0].text == greedy.choices[0].text


def test_client_gone_while_uploading_is_no_error(server: Server) -> None:
    start = len(server.log.read_text())
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ".encode())
        time.sleep(0.3)  # the handler is now waiting for the rest of the body
    deadline = time.monotonic() + 10
    while "client disconnected while sending its request" not in server.log.read_text()[start:]:
        assert time.monotonic() < deadline, server.log.read_text()[start:]
        time.sleep(0.05)
    time.sleep(0.3)  # anything logged after the disconnect
    new = server.log.read_text()[start:]
    assert "Traceback" not in new and "ERROR" not in new, new
    assert server.health()["status"] == "ok"


def test_api_key_is_required_on_every_route_but_health(server: Server) -> None:
    assert server.client().models.list().data[0].id == MODEL_ID  # the openai client sends api_key as bearer
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(api_key="sk-wrong").chat.completions.create(**chat_body())
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    wrong = [{}, {"Authorization": API_KEY}, {"Authorization": f"Basic {API_KEY}"},
             {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": f"Bearer {API_KEY[:-1]}"},
             {"Authorization": "Bearer"}]
    routes = [("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL_ID}"), ("POST", "/v1/chat/completions"),
              ("POST", "/v1/completions"), ("GET", "/v1/nothing")]
    for headers in wrong:
        for method, path in routes:
            r = httpx.request(method, f"{server.url}{path}", headers=headers, json=chat_body(), timeout=10)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_api_key"
    lower = httpx.get(f"{server.url}/v1/models", headers={"authorization": f"bearer {API_KEY}"}, timeout=10)
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_api_key_flag_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from argparse import Namespace

    from aspd.serve.cli import api_key

    monkeypatch.delenv("ASPD_API_KEY", raising=False)
    assert api_key(Namespace(api_key=None)) is None
    monkeypatch.setenv("ASPD_API_KEY", "from-env")
    assert api_key(Namespace(api_key=None)) == "from-env"
    assert api_key(Namespace(api_key="from-flag")) == "from-flag"


@pytest.mark.parametrize("flag,env,source", [("", None, "--api-key"), ("two words", None, "--api-key"),
                                             (None, "", "ASPD_API_KEY"), (None, "clé", "ASPD_API_KEY")])
def test_a_key_no_client_can_send_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], flag: str | None,
                                                            env: str | None, source: str) -> None:
    from aspd.cli import main

    monkeypatch.delenv("ASPD_API_KEY", raising=False)
    if env is not None:
        monkeypatch.setenv("ASPD_API_KEY", env)
    argv = ["serve", "--model", "no-such-model", "--port", "0"] + ([] if flag is None else ["--api-key", flag])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"aspd: error: {source} must be a non-empty string of printable ASCII" in err
    assert "cannot load model" not in err  # refused before the slow load


def test_serve_help_documents_the_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    from aspd.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--api-key KEY" in out and "$ASPD_API_KEY" in out and "/health" in out


def test_queue_full_answers_503_with_retry_after(server: Server) -> None:
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def call() -> None:
        r = server.post("/v1/chat/completions", chat_body(max_tokens=SLOW // 2), timeout=60)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(MAX_BATCH + 1 + 2)]  # 2 more than run or wait
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
    assert len(codes) == MAX_BATCH + 3 and codes.count(503) >= 1 and codes.count(200) >= 1, codes
    busy = next(r for r in results if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["error"]["code"] == "queue_full"
    assert server.health()["waiting"] == 0


def test_concurrent_requests_share_the_batch_and_answer_as_alone(server: Server) -> None:
    """Two requests decoded at once (each step feeds both) give the answers each gets alone; one streams."""
    bodies = [chat_body(max_tokens=SLOW // 2, temperature=0),
              chat_body(max_tokens=SLOW // 4, temperature=0.8, seed=5, stream=True,
                        messages=[{"role": "user", "content": "Compare Python and Go."}])]

    def text(r: httpx.Response, stream: bool) -> str:
        if not stream:
            return r.json()["choices"][0]["message"]["content"]
        chunks = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
        return "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])

    alone = [text(server.post("/v1/chat/completions", b), bool(b.get("stream"))) for b in bodies]
    results: list[str | None] = [None, None]

    def call(i: int) -> None:
        results[i] = text(server.post("/v1/chat/completions", bodies[i]), bool(bodies[i].get("stream")))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    most = 0
    while any(t.is_alive() for t in threads):
        most = max(most, server.health()["running"])
        time.sleep(0.05)
    assert most == 2  # both ran at once
    assert results == alone and all(alone)


# ---------------------------------------------------------------------------------------------- in-process


class ForcedGroupEngine(HybridEngine):
    """Every answer starts with a forced group, so that branch paths run with a random model."""

    titles = ("Diet", "Sleep", "Work")

    def decoder(self, ids: Any, kv: Any, **kw: Any) -> Any:  # alone (generate) and batched (the server) alike
        c = self.ctrl
        prefix: list[int] = []
        for t in self.titles:
            prefix += [c.title, *text_ids(self.tokenizer, t), c.title_end]
        kw["answer_prefix"] = kw.get("answer_prefix") or [*prefix, c.para]
        return super().decoder(ids, kv, **kw)


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


def test_mode_and_max_groups_switch_off_the_groups_a_model_opens(one_thread: None) -> None:
    """On a model that opens groups by itself: hybrid answers open them, `mode: serial` and `max_groups` take
    them away, and each answer is the engine's own under the same settings."""
    from fastapi.testclient import TestClient

    from aspd.serve.app import ServedModel, create_app
    from aspd.testing import grouping_model

    engine = HybridEngine(*grouping_model(), engine="eager")
    app = create_app(ServedModel(engine, "groups", context=CONTEXT), max_queue=2)
    messages = [{"role": "user", "content": "Give three tips."}]

    def served(**aspd: Any) -> dict[str, Any]:
        body = {"model": "groups", "messages": messages, "max_tokens": 40, "temperature": 1.0, "seed": 7,
                "aspd": {"max_branch_tokens": 8, **aspd}}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["aspd"]

    def engine_markup(mode: str = "hybrid", **limits: int) -> str:
        g = engine.generate(messages, mode=mode, sampling=SamplingParams(temperature=1.0, seed=7),
                            limits=Limits(max_new_tokens=40, max_branch_tokens=8, **limits))
        return render(g.doc)

    with TestClient(app) as client:
        hybrid, serial = served(), served(mode="serial")
        one, none = served(max_groups=1), served(max_groups=0)
    assert hybrid["stats"]["groups"] == 2 and hybrid["markup"] == engine_markup()
    assert serial["mode"] == "serial" and serial["stats"]["groups"] == 0
    assert serial["markup"] == engine_markup("serial")
    assert one["stats"]["groups"] == 1 and one["markup"] == engine_markup(max_groups=1)
    assert none["stats"]["groups"] == 0 and none["markup"] == engine_markup(max_groups=0)


def test_pasta_answers_as_the_engine_does(one_thread: None) -> None:
    """On a model with PASTA tags (random rows, so that it samples them): a `pasta` request is the engine's own
    PASTA answer under the same seed, spans spliced into the text and its PASTA markup in the extension."""
    from fastapi.testclient import TestClient

    from aspd.pasta.tokens import add_pasta_tokens
    from aspd.serve.app import ServedModel, create_app

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    add_control_tokens(tok, model)
    tags = add_pasta_tokens(tok, model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for t in tags.all():
            model.get_output_embeddings().weight[t] = torch.randn(model.config.hidden_size, generator=gen) * 0.6
    engine = HybridEngine(model, tok, engine="eager")
    messages = [{"role": "user", "content": "Give three tips."}]
    body = {"model": "pasta", "messages": messages, "max_tokens": 40, "temperature": 1.0, "seed": 5,
            "aspd": {"mode": "pasta"}}
    with TestClient(create_app(ServedModel(engine, "pasta", context=CONTEXT), max_queue=2)) as client:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    ref = engine.generate(messages, mode="pasta", sampling=SamplingParams(temperature=1.0, seed=5),
                          limits=Limits(max_new_tokens=40))
    assert ref.stats.branches == [2]  # this seed forks two spans
    out = r.json()
    assert out["choices"][0]["message"]["content"] == ref.text
    assert out["choices"][0]["finish_reason"] == ref.finish_reason
    ext = out["aspd"]
    assert ext["mode"] == "pasta" and ext["markup"] == ref.markup and "<promise/>" in ext["markup"]
    assert ext["stats"]["groups"] == 1 and ext["stats"]["tokens"] == ref.stats.tokens


class FailingEngine(HybridEngine):
    def decoder(self, ids: Any, kv: Any, **kw: Any) -> Any:
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


# ---------------------------------------------------------------------------------------------- fuzzing

FUZZ_CONTEXT = 64  # clamps every answer to a few dozen tokens, so that accepted requests stay cheap
NESTED = "\x00nested\x00"  # stands for a value nested far too deep for json.dumps; spliced in as text
NUMBERS = [0, 1, -1, 2, 0.5, -0.0, 1e-300, 5e-324, 1e-40, 1e300, 1.7976931348623157e308, math.inf, -math.inf,
           math.nan, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400]
_chars = st.characters() | st.characters(categories=["Cs"])  # lone surrogates too
_leaf = (st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(NUMBERS)
         | st.text(_chars, max_size=12) | st.sampled_from(["", "hybrid", "serial", "pasta", "sot", "text", "user", "forced"]))
JSON = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(_chars, max_size=6), inner, max_size=3), max_leaves=8) | st.just(NESTED)


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field of a request model, nested ones too ("aspd.max_branches", "messages.0.content.0.text")."""

    def nested(annotation: Any, in_list: bool = False) -> Iterator[tuple[type[BaseModel], bool]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation, in_list
        for arg in getattr(annotation, "__args__", ()):
            yield from nested(arg, in_list or get_origin(annotation) is list)

    paths = []
    for name, info in model.model_fields.items():
        paths.append(f"{prefix}{name}")
        for inner, in_list in nested(info.annotation):
            paths += _field_paths(inner, f"{prefix}{name}.0." if in_list else f"{prefix}{name}.")
    return paths


def _base(chat: bool, stream: bool) -> dict[str, Any]:
    """A valid request with every nested object present, so that any field path can be set."""
    common = {"model": "forced", "max_tokens": 4, "stream": stream, "stream_options": {}, "aspd": {}}
    if chat:
        return {**common, "messages": [{"role": "user", "content": [{"type": "text", "text": "Give tips."}]}]}
    return {**common, "prompt": "Paris is"}


def _child(node: Any, key: str) -> Any:
    """node[key] for a dict, node[int(key)] for a list, None where there is no such child."""
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    return None


@st.composite
def fuzzed_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    from aspd.serve.protocol import ChatRequest, CompletionRequest

    chat = draw(st.booleans())
    body: Any = _base(chat, draw(st.booleans()))
    paths = _field_paths(ChatRequest if chat else CompletionRequest)
    for path in draw(st.lists(st.sampled_from(["", *paths]), min_size=1, max_size=3, unique=True)):
        value = draw(JSON)
        if path == "":  # the whole body
            body = value
            continue
        *parents, last = path.split(".")
        node = body
        for key in parents:  # an earlier draw may have replaced a parent: then there is nothing to set
            node = _child(node, key)
        if isinstance(node, dict) and draw(st.booleans()):
            node.pop(last, None)  # a missing field
        elif isinstance(node, dict):
            node[last] = value
        elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = value
    text = json.dumps(body).replace(json.dumps(NESTED), "[" * DEEP + "]" * DEEP)
    return "/v1/chat/completions" if chat else "/v1/completions", text.encode()


def test_random_json_in_every_field_never_gives_a_5xx(forced: ForcedGroupEngine, one_thread: None) -> None:
    """In-process, so that a small context can cap what an accepted request generates; the forced group makes
    the random aspd limits act on a real group."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings

    from aspd.serve.app import ServedModel, create_app

    app = create_app(ServedModel(forced, "forced", context=FUZZ_CONTEXT), max_queue=2)
    seen: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fuzzed_requests())
    def check(request: tuple[str, bytes]) -> None:
        path, body = request
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (r.status_code, r.text)
        if r.status_code >= 400:
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
        elif r.headers["content-type"].startswith("text/event-stream"):
            events = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
            assert events and not any("error" in e for e in events), r.text  # no error event in a 200 stream
            assert r.text.rstrip().endswith("data: [DONE]")
        else:
            assert r.json()["choices"], r.text

    with TestClient(app, raise_server_exceptions=False) as client:
        check()
        assert client.get("/health").json()["status"] == "ok"  # and the server still answers
        ok = client.post("/v1/completions", json={"model": "forced", "prompt": "Paris is", "max_tokens": 4})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    assert seen.get(200, 0) >= 5 and sum(seen.values()) >= 100, seen  # both accepted and refused requests ran
