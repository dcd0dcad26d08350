"""Rewriter and Judge over any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp, `aspd serve`,
hosted APIs), with a concurrency limit, retries, timeouts and an on-disk reply cache.

Requests go through `openai.AsyncOpenAI` (its connection pool, timeouts, auth and error types). Its own
retries are off (`max_retries=0`) and the loop here retries instead: the client's backoff (0.5 s doubling to
8 s) cannot be set, and its retries are invisible, while a transform run counts every attempt's failure by
kind and takes `--backoff`/`--backoff-max`. The loop also retries replies the client accepts but a run cannot use (no choices).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx
import openai

from aspd.pipeline.backends import CallLog, ChatBackend, current_log

__all__ = ["OpenAICompatBackend", "ReplyCache"]

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx: the server may answer on the next try


class ReplyCache:
    """One JSON file per request hash. Writes are atomic (temp file + rename): a killed run never leaves a
    half-written entry, and two runs sharing a cache at worst write the same file twice."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @staticmethod
    def key(body: dict[str, Any]) -> str:
        # The whole request body: model, messages, sampling parameters and seed all change the reply.
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing or unreadable: ask the model again
        return obj if isinstance(obj, dict) and isinstance(obj.get("content"), str) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(value, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class OpenAICompatBackend(ChatBackend):
    """`base_url` includes the API prefix (e.g. http://localhost:8000/v1), as with the openai client.

    Request i of a batch of N candidates (or K votes) carries seed `seed + i`, so the N requests differ
    (and are cached separately) while a rerun with the same settings hits the cache.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        prompts: Any = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        temperature: float = 0.7,
        judge_temperature: float = 0.7,
        top_p: float | None = None,
        max_tokens: int | None = None,
        judge_max_tokens: int | None = None,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        super().__init__(prompts)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.name = name or f"openai:{model}"
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff, self.backoff_max = backoff, backoff_max
        self.temperature, self.judge_temperature = temperature, judge_temperature
        self.top_p = top_p
        self.max_tokens, self.judge_max_tokens = max_tokens, judge_max_tokens
        self.seed = seed
        self.extra_body = dict(extra_body or {})
        self.cache = ReplyCache(cache_dir) if cache_dir else None
        self._client: openai.AsyncOpenAI | None = None
        self._sem: asyncio.Semaphore | None = None
        self._headers: dict[str, Any] | None = None  # per request: omits Authorization when there is no key
        self._inflight: dict[str, asyncio.Future[str | None]] = {}

    def _ensure(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        # Created on first use so they belong to the running event loop.
        if self._client is None or self._sem is None:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            # The client insists on a key; without one, a placeholder that is never sent (see `_headers`).
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self.api_key or "none", max_retries=0, timeout=self.timeout,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits))
            self._headers = None if self.api_key else {"Authorization": openai.Omit()}
            self._sem = asyncio.Semaphore(self.concurrency)
        return self._client, self._sem

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def body(self, messages: list[dict[str, str]], *, judge: bool, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": self.judge_temperature if judge else self.temperature,
                                "seed": self.seed + index}
        max_tokens = self.judge_max_tokens if judge else self.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if self.top_p is not None:
            body["top_p"] = self.top_p
        body.update(self.extra_body)
        return body

    async def complete(self, messages: list[dict[str, str]], *, judge: bool, count: int) -> list[str | None]:
        return list(await asyncio.gather(*(self.request(self.body(messages, judge=judge, index=i))
                                           for i in range(count))))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # Exponential backoff with "equal jitter": at least half the step, so retries never stampede at 0 s.
        step = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
        delay = step / 2 + random.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    async def request(self, body: dict[str, Any]) -> str | None:
        """The reply text, or None once every attempt failed (each failure is logged by kind).

        Identical requests in flight at the same time (candidates that came out the same text get the same
        judge requests) share one HTTP call; the extra callers count it as a cache hit.
        """
        log = current_log()
        key = ReplyCache.key(body)
        if self.cache:
            hit = self.cache.get(key)
            if hit is not None:
                log.cache_hits += 1
                return hit["content"]
        shared = self._inflight.get(key)
        if shared is not None:
            log.cache_hits += 1
            return await asyncio.shield(shared)
        task = asyncio.ensure_future(self._fetch(body, key, log))
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._inflight.pop(key) if self._inflight.get(key) is t else None)
        return await asyncio.shield(task)

    async def _fetch(self, body: dict[str, Any], key: str, log: CallLog) -> str | None:
        client, sem = self._ensure()
        # The body as the client takes it: its named parameters, the rest (top_k, ...) sent as they are.
        known = {k: v for k, v in body.items() if k in _PARAMS}
        extra = {k: v for k, v in body.items() if k not in _PARAMS}
        retry_after: float | None = None
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt, retry_after))
            retry_after = None
            try:
                async with sem:
                    log.calls += 1
                    reply = await client.chat.completions.create(**known, extra_body=extra or None,
                                                                 extra_headers=self._headers)
                content = reply.choices[0].message.content
                if content is not None and not isinstance(content, str):
                    raise TypeError(f"content is {type(content).__name__}")
            except openai.APITimeoutError as e:
                last = f"timeout after {self.timeout:g}s ({type(e).__name__})"
                log.fail("timeout", last)
                continue
            except openai.APIConnectionError as e:
                last = f"{type(e.__cause__ or e).__name__}: {e.__cause__ or e}"
                log.fail("connection_error", last)
                continue
            except openai.APIStatusError as e:
                r = e.response
                last = f"HTTP {r.status_code} from {self.url}: {r.text[:200]!r}"
                log.fail("http_error", last)
                if r.status_code < 500 and r.status_code not in _RETRY_STATUS:
                    break  # a request the server refuses (bad model name, prompt too long): retrying won't help
                retry_after = _retry_after(r)
                continue
            except (openai.APIResponseValidationError, ValueError, LookupError, TypeError, AttributeError) as e:
                last = f"unreadable response ({type(e).__name__}: {e})"
                log.fail("bad_response", last)
                continue
            content = content or ""  # some servers send null content for an empty reply
            usage = reply.usage.model_dump(exclude_none=True) if reply.usage is not None else None
            log.usage(usage)
            if self.cache:
                self.cache.put(key, {"content": content, "usage": usage, "model": reply.model})
            return content
        log.fail("request_failed", f"gave up after {self.retries + 1} attempt(s); last: {last}")
        return None


# The chat-completions parameters the bodies here use by name; anything else goes in `extra_body`.
_PARAMS = frozenset({"model", "messages", "temperature", "top_p", "max_tokens", "seed"})


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers["retry-after"])
    except (KeyError, ValueError):
        return None
