"""The FastAPI app: OpenAI-compatible chat and text completions on top of one HybridEngine.

Threads: the event loop answers HTTP (health and model listing never wait on the model); one tokenizer
thread turns requests into prompt ids with its own tokenizer copy (a prompt can be large, and the loop must
not stall on it); one model thread (worker.py) runs the generations, batched (continuous batching: every running
request steps in one forward; the rest wait FIFO in a bounded queue).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from aspd.engine.batch import DEFAULT_MAX_BATCH, DEFAULT_MAX_SLOTS
from aspd.engine.core import HybridEngine, Limits
from aspd.engine.sampling import SamplingParams
from aspd.engine.sot import skeleton_messages
from aspd.sample import prompt_ids
from aspd.serve.protocol import APIError, ChatRequest, CompletionRequest, bad_request, parse_request
from aspd.serve.worker import Chunk, GenRequest, GenResult, Job, Worker

log = logging.getLogger("aspd.serve")

DEFAULT_MAX_TOKENS = Limits().max_new_tokens  # when a request gives none (then clamped to the context)
MAX_BODY_BYTES = 16 << 20
# Below this a temperature samples the argmax anyway, and dividing float32 logits by it overflows (vLLM's
# _SAMPLING_EPS does the same).
GREEDY_BELOW = 1e-5


@dataclass
class ServedModel:
    """The engine plus what the API says about it."""

    engine: HybridEngine
    model_id: str
    aliases: set[str] = field(default_factory=set)  # other names a request may use (the --model argument)
    context: int | None = None  # max_position_embeddings: prompt + answer must fit
    defaults: dict[str, Any] = field(default_factory=dict)  # sampling defaults from generation_config.json
    created: int = field(default_factory=lambda: int(time.time()))

    def names(self) -> set[str]:
        return {self.model_id, *self.aliases}


def context_length(model: Any) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def sampling_defaults(model: Any) -> dict[str, Any]:
    """Only what generation_config.json sets explicitly (as vLLM does); the rest follows the OpenAI defaults."""
    gc = getattr(model, "generation_config", None)
    diff = gc.to_diff_dict() if gc is not None else {}
    return {k: diff[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if diff.get(k) is not None}


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _digest(secret: bytes) -> bytes:
    # Compare digests: compare_digest then takes equal lengths and leaks not even the key's length.
    return hashlib.sha256(secret).digest()


class BearerAuth:
    """Every route but /health answers 401 (OpenAI error shape) without `Authorization: Bearer <key>`.

    Plain ASGI, before routing: an unknown path is refused too, and no request body is read.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.want = _digest(api_key.encode())

    def allowed(self, scope: Scope) -> bool:
        value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = value.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(token.strip()), self.want)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health" or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        err = APIError(401, "missing or incorrect API key; send it as 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await _error_response(err)(scope, receive, send)


def create_app(served: ServedModel, *, max_queue: int = 16, api_key: str | None = None,
               max_batch: int = DEFAULT_MAX_BATCH, max_slots: int = DEFAULT_MAX_SLOTS) -> FastAPI:
    """`api_key`: when set, every route but /health requires it as a bearer token. `max_batch` requests run at
    once (sharing each forward) within `max_slots` cache slots; up to `max_queue` more wait."""
    engine = served.engine
    worker = Worker(engine, max_queue, max_batch=max_batch, max_slots=max_slots)
    front_tok = copy.deepcopy(engine.tokenizer)  # the model thread owns engine.tokenizer
    tok_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aspd-tokenize")
    vocab = len(front_tok)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()
        tok_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="aspd", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.state.served = served
    if api_key is not None:
        app.add_middleware(BearerAuth, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = f"Invalid URL ({request.method} {request.url.path})" if exc.status_code in (404, 405) else str(exc.detail)
        return _error_response(APIError(exc.status_code, msg, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(APIError(500, "internal server error; see the server log", type="server_error"))

    # ------------------------------------------------------------------ cheap endpoints (never wait)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = worker.alive()
        return JSONResponse(
            {"status": "ok" if ok else "error", "model": served.model_id, "running": worker.running,
             "waiting": worker.waiting, "max_batch": worker.max_batch, "max_queue": worker.max_queue,
             "served": worker.served},
            status_code=200 if ok else 503,
        )

    def model_card() -> dict[str, Any]:
        return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "aspd",
                "max_model_len": served.context}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        if model not in served.names():
            raise APIError(404, f"The model {model!r} does not exist", param="model", code="model_not_found")
        return model_card()

    # ------------------------------------------------------------------ generation

    async def read_json(request: Request) -> Any:
        body = bytearray()
        async for part in request.stream():  # counted as it comes: an endless body is cut off early
            body += part
            if len(body) > MAX_BODY_BYTES:
                raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"invalid JSON body: {e}") from None
        except RecursionError:
            raise bad_request("invalid JSON body: nested too deeply") from None

    def sot_question(req: ChatRequest | CompletionRequest) -> str | list[dict[str, str]] | None:
        """What SoT writes its own prompts from: the chat, or the text prompt (token ids were refused)."""
        if req.mode() != "sot":
            return None
        if isinstance(req, ChatRequest):
            return req.chat()
        return req.prompt if isinstance(req.prompt, str) else str(req.prompt[0])

    def chat_ids(messages: list[dict[str, str]]) -> list[int]:
        try:
            return prompt_ids(front_tok, messages)
        except Exception as e:  # noqa: BLE001 - a template may reject a conversation (role order, ...)
            raise bad_request(f"the chat template rejected the messages: {e}", "messages") from None

    def tokenize(req: ChatRequest | CompletionRequest) -> tuple[list[int], int | None]:
        """Runs on the tokenizer thread: the prompt's ids and, for `sot`, the length of its outline prompt (the
        question wrapped in SoT's instructions, which must fit the context too)."""
        question = sot_question(req)
        outline = None if question is None else len(chat_ids(skeleton_messages(question)))
        if isinstance(req, ChatRequest):
            return chat_ids(req.chat()), outline
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            if any(not 0 <= t < vocab for t in p):  # type: ignore[operator]
                raise bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
            return [int(t) for t in p], outline  # type: ignore[arg-type]
        text = p if isinstance(p, str) else p[0]
        return list(front_tok(text, add_special_tokens=True)["input_ids"]), outline

    def build(req: ChatRequest | CompletionRequest, ids: list[int], outline: int | None, rid: str) -> GenRequest:
        param = "messages" if isinstance(req, ChatRequest) else "prompt"
        if not ids:
            raise bad_request("the prompt is empty", param)
        ctx = served.context
        for n, what in ((len(ids), f"your {param}"),
                        (outline, f"the outline prompt that aspd.mode 'sot' makes of your {param}")):
            if ctx is not None and n is not None and n >= ctx:
                raise bad_request(f"This model's maximum context length is {ctx} tokens. However, {what} "
                                  f"resulted in {n} tokens, leaving no room for an answer.", param,
                                  "context_length_exceeded")
        # A max_tokens beyond the context is clamped (finish_reason "length" tells the client), not refused.
        want = req.limit() or DEFAULT_MAX_TOKENS
        budget = want if ctx is None else min(want, ctx - len(ids))
        d = served.defaults
        temperature = req.temperature if req.temperature is not None else d.get("temperature", 1.0)
        if temperature < GREEDY_BELOW:
            temperature = 0.0
        top_k = req.top_k if req.top_k is not None else d.get("top_k", 0)
        try:
            sampling = SamplingParams(
                temperature=temperature,
                top_p=req.top_p if req.top_p is not None else d.get("top_p", 1.0),
                top_k=max(0, top_k),
                repetition_penalty=req.repetition_penalty or d.get("repetition_penalty", 1.0),
                # No seed means fresh draws each request, as in the OpenAI API.
                seed=req.seed if req.seed is not None else secrets.randbits(31),
            )
        except ValueError as e:
            raise bad_request(str(e)) from None
        opt = req.aspd
        mode = req.mode()
        if mode == "pasta" and served.engine.pasta is None:
            raise bad_request(f"aspd.mode 'pasta' needs a model trained with `aspd train --format pasta`; "
                              f"{served.model_id!r} has no PASTA tags", "aspd.mode")
        base = Limits()
        limits = Limits(
            max_new_tokens=budget,
            max_branches=base.max_branches if opt is None or opt.max_branches is None else opt.max_branches,
            max_branch_tokens=(base.max_branch_tokens if opt is None or opt.max_branch_tokens is None
                               else opt.max_branch_tokens),
            max_groups=base.max_groups if opt is None or opt.max_groups is None else opt.max_groups,
        )
        return GenRequest(ids, mode, sampling, limits, req.stops(), req.stream, bool(opt and opt.branch_deltas),
                          rid, sot_question(req))

    async def handle(request: Request, chat: bool) -> Response:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:
            payload = await read_json(request)
        except ClientDisconnect:  # a normal event, not a server error
            log.info("%s: client disconnected while sending its request", rid)
            return Response(status_code=499)
        req = parse_request(ChatRequest if chat else CompletionRequest, payload)
        if req.model not in served.names():
            raise APIError(404, f"The model {req.model!r} does not exist; this server serves {served.model_id!r}",
                           param="model", code="model_not_found")
        loop = asyncio.get_running_loop()
        ids, outline = await loop.run_in_executor(tok_pool, tokenize, req)
        gen = build(req, ids, outline, rid)
        job = Job(gen, loop)
        if not worker.submit(job):
            raise APIError(503, f"server busy: {worker.max_queue} request(s) already waiting; retry later",
                           type="server_error", code="queue_full",
                           headers={"Retry-After": str(worker.retry_after())})
        log.info("%s queued: %d prompt tokens, max %d new, mode %s", rid, len(ids), gen.limits.max_new_tokens,
                 gen.mode)
        shape = _Shape(rid, served.model_id, chat, gen)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(worker, job, shape, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        kind, value = await _wait(worker, job, request)
        if kind == "gone":
            return Response(status_code=499)  # nobody is listening any more
        r = _result_or_raise(kind, value)
        log.info("%s done: %d tokens, %s, %.2fs", rid, r.completion_tokens, r.finish_reason, r.stats.get("seconds", 0.0))
        return JSONResponse(shape.full(r))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    return app


def _result_or_raise(kind: str, value: Any) -> GenResult:
    if kind == "done":
        return value
    if kind == "cancelled":
        raise APIError(503, "generation was cancelled (server shutting down)", type="server_error")
    raise APIError(500, "internal error while generating; see the server log", type="server_error")


async def _final(job: Job) -> tuple[str, Any]:
    while True:
        kind, value = await job.items.get()
        if kind != "chunk":
            return kind, value


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait(worker: Worker, job: Job, request: Request) -> tuple[str, Any]:
    """The job's outcome, or ("gone", None) once the client hangs up (the job is then cancelled)."""
    result = asyncio.ensure_future(_final(job))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result.done():
            return result.result()
        return "gone", None
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()
            worker.cancel(job)


@dataclass
class _Shape:
    """Builds OpenAI-shaped bodies for one request."""

    rid: str
    model: str
    chat: bool
    gen: GenRequest
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def usage(self, r: GenResult) -> dict[str, int]:
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens}

    def aspd(self, r: GenResult) -> dict[str, Any]:
        return {"mode": self.gen.mode, "stats": r.stats, "markup": r.markup, "raw": r.raw, "partial": r.partial}

    def full(self, r: GenResult) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                      "finish_reason": r.finish_reason}
            body = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
            body = self._head("text_completion")
        return {**body, "choices": [choice], "usage": self.usage(r), "aspd": self.aspd(r)}

    def chunk(self, content: str | None, finish: str | None = None, *, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if content is not None:
                delta["content"] = content
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def event_chunk(self, c: Chunk) -> dict[str, Any]:
        body = self.chunk(c.content)
        if self.gen.branch_deltas and c.kind in ("token", "open", "close"):
            ext: dict[str, Any] = {"stream": c.stream}
            if c.kind == "token":
                ext["delta"] = c.delta
            else:
                ext.update(event=c.kind, group=c.group, titles=list(c.titles),
                           streams=[f"g{c.group}b{b}" for b in range(len(c.titles))])
            body["aspd"] = ext
        return body


def _sse_line(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(worker: Worker, job: Job, shape: _Shape, include_usage: bool) -> AsyncIterator[str]:
    """SSE in the OpenAI chunk format. If the client disconnects, Starlette cancels this generator and the
    finally clause frees the model at its next token."""
    finished = False
    try:
        if shape.chat:
            yield _sse_line(shape.chunk("", role=True))
        while True:
            kind, value = await job.items.get()
            if kind == "chunk":
                if value.content or (shape.gen.branch_deltas and value.kind in ("token", "open", "close")):
                    yield _sse_line(shape.event_chunk(value))
                continue
            finished = True
            try:
                r = _result_or_raise(kind, value)
            except APIError as e:
                yield _sse_line(e.body())
                yield "data: [DONE]\n\n"
                return
            last = shape.chunk(None if shape.chat else "", r.finish_reason)
            yield _sse_line({**last, "usage": shape.usage(r), "aspd": shape.aspd(r)})
            if include_usage:  # the OpenAI shape: one more chunk with no choices, only usage
                yield _sse_line({**shape._head(last["object"]), "choices": [], "usage": shape.usage(r)})
            yield "data: [DONE]\n\n"
            log.info("%s done: %d tokens, %s, %.2fs", shape.rid, r.completion_tokens, r.finish_reason,
                     r.stats.get("seconds", 0.0))
            return
    finally:
        if not finished:
            worker.cancel(job)
