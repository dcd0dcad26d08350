"""Rewriter and Judge with a local Transformers model, through its own chat template.

The same prompts as the OpenAI-compatible backend. One generation at a time (a lock; the model is not
thread-safe), run in a worker thread so the event loop keeps serving other samples' HTTP calls. The N
candidates (or K votes) of one request are one batched `generate` call: the prompt repeated, sampled rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aspd.pipeline.backends import ChatBackend, current_log

__all__ = ["LocalBackend"]


class LocalBackend(ChatBackend):
    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        prompts: Any = None,
        device: str | None = None,
        dtype: str = "auto",
        temperature: float = 0.7,
        judge_temperature: float = 0.7,
        top_p: float | None = None,
        max_new_tokens: int = 2048,
        judge_max_new_tokens: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        model: Any = None,
        tokenizer: Any = None,
        name: str | None = None,
    ):
        super().__init__(prompts)
        self.source = str(model_name_or_path)
        self.name = name or f"local:{Path(self.source).name or self.source}"
        self.device, self.dtype = device, dtype
        self.temperature, self.judge_temperature, self.top_p = temperature, judge_temperature, top_p
        self.max_new_tokens, self.judge_max_new_tokens = max_new_tokens, judge_max_new_tokens
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.model, self.tokenizer = model, tokenizer  # given: used as is (tests); else loaded on first use
        self._lock: asyncio.Lock | None = None

    def _load(self) -> None:
        if self.model is None or self.tokenizer is None:
            from aspd.loading import load_model

            self.model, self.tokenizer = load_model(self.source, device=self.device, dtype=self.dtype)

    async def complete(self, messages: list[dict[str, str]], *, judge: bool, count: int) -> list[str | None]:
        log = current_log()
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                replies, prompt_tokens, new_tokens = await asyncio.to_thread(self._generate, messages, judge, count)
            except Exception as e:  # one bad prompt (too long, OOM) must not end the run
                log.calls += count
                log.fail("request_failed", f"local generation failed: {type(e).__name__}: {e}")
                return [None] * count
        log.calls += count
        log.prompt_tokens += prompt_tokens
        log.completion_tokens += new_tokens
        return list(replies)

    def _generate(self, messages: list[dict[str, str]], judge: bool, count: int) -> tuple[list[str], int, int]:
        import torch

        from aspd.sample import end_of_turn_ids, prompt_ids

        self._load()
        tok, model = self.tokenizer, self.model
        ids = prompt_ids(tok, messages)
        stops = set(end_of_turn_ids(tok))
        if tok.eos_token_id is not None:
            stops.add(int(tok.eos_token_id))
        temperature = self.judge_temperature if judge else self.temperature
        max_new = self.judge_max_new_tokens if judge else self.max_new_tokens
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit:
            max_new = min(max_new, limit - len(ids))
            if max_new < 1:
                raise ValueError(f"prompt of {len(ids)} tokens leaves no room in the {limit}-token context")
        # Reproducible per request: the seed depends on the prompt, not on the order samples arrive in.
        digest = hashlib.sha256(json.dumps([messages, judge], ensure_ascii=False).encode()).digest()
        torch.manual_seed(self.seed + int.from_bytes(digest[:4], "little"))
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(stops)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad, "eos_token_id": sorted(stops)}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=0)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs.update(do_sample=False)
        device = next(model.parameters()).device
        replies: list[str] = []
        new_tokens = 0
        for start in range(0, count, self.batch_size):
            rows = min(self.batch_size, count - start)
            input_ids = torch.tensor([ids] * rows, device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            for row in out[:, len(ids):].tolist():
                cut = next((i for i, t in enumerate(row) if t in stops), len(row))
                new_tokens += min(cut + 1, len(row))
                replies.append(tok.decode(row[:cut], skip_special_tokens=True))
        return replies, len(ids) * count, new_tokens
