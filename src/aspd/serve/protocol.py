"""Request bodies of the OpenAI-compatible API and the error shape OpenAI clients expect.

Models are strict (no "0.5" for a float, no `true` for an int) so that a wrong type is a 400, as the
OpenAI API does, rather than a silent coercion. Every number must be finite and in a range the sampler can
compute with, and every string valid Unicode (JSON can spell a lone UTF-16 surrogate, which no tokenizer or
UTF-8 encoder takes): bad input is a 400 naming the field, never a failure inside the model thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the seed range torch generators take (vLLM's bound too)


class APIError(Exception):
    """An error answered as `{"error": {message, type, param, code}}` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _valid_unicode(value: Any) -> Any:
    """A string, or the strings of a list, must encode to UTF-8 (no lone surrogate such as "\\ud800")."""
    for s in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
        if isinstance(s, str):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("not valid Unicode (it contains a lone UTF-16 surrogate)") from None
    return value


# strict: no coercion; allow_inf_nan: JSON parses NaN, Infinity and 1e400 (= inf) into floats.
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class AspdOptions(BaseModel):
    """The `aspd` request extension: decoding mode, structure limits, per-stream deltas when streaming."""

    model_config = ConfigDict(**_STRICT, extra="forbid")

    mode: Literal["hybrid", "serial", "pasta", "sot"] = "hybrid"
    max_branches: int | None = Field(None, ge=1)
    max_branch_tokens: int | None = Field(None, ge=2)  # room for one body token and <|/branch|>
    max_groups: int | None = Field(None, ge=0)
    branch_deltas: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(**_STRICT, extra="ignore")

    include_usage: bool = False


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored, as most OpenAI-compatible servers do."""

    model_config = ConfigDict(**_STRICT, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)  # no upper bound: clamped to the context
    temperature: float | None = Field(None, ge=0, le=2)  # OpenAI's range
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extra body fields (vLLM spelling); top_k -1 means "off" there, 0 here.
    top_k: int | None = Field(None, ge=-1)
    # SGLang's upper bound; near 0 it divides the logits past float32 (inf, then NaN probabilities).
    repetition_penalty: float | None = Field(None, ge=0.01, le=2)
    # Accepted for compatibility when neutral; anything else is refused rather than silently ignored.
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | int | None = None
    logit_bias: dict[str, Any] | None = None
    aspd: AspdOptions | None = None

    _unicode = field_validator("model", "stop", "user")(_valid_unicode)

    @field_validator("n")
    @classmethod
    def _only_one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 16:
            raise ValueError("at most 16 stop strings")
        if any(not s for s in items):
            raise ValueError("stop strings must be non-empty")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad_request(f"{name} is not supported; use repetition_penalty", name)
        if self.logprobs not in (None, False, 0):
            raise bad_request("logprobs are not supported", "logprobs")
        if self.logit_bias:
            raise bad_request("logit_bias is not supported", "logit_bias")
        mode = self.mode()
        # A PASTA answer is complete only once its spans are spliced into their promises, a SoT answer once its
        # points are assembled: there is no reading order to stream, nor a text to cut at a stop string early.
        if mode in ("pasta", "sot") and self.stream:
            raise bad_request(f"stream is not supported with aspd.mode {mode!r} (its text is complete only at "
                              "the end); use hybrid or serial, or set stream to false", "stream")
        if mode in ("pasta", "sot") and self.stops():
            raise bad_request(f"stop is not supported with aspd.mode {mode!r}", "stop")

    def mode(self) -> str:
        return self.aspd.mode if self.aspd is not None else "hybrid"


class TextPart(BaseModel):
    model_config = ConfigDict(**_STRICT, extra="ignore")

    type: Literal["text"]
    text: str

    _unicode = field_validator("text")(_valid_unicode)


class ChatMessage(BaseModel):
    model_config = ConfigDict(**_STRICT, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    _unicode = field_validator("content", "name")(_valid_unicode)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if not self.messages:
            raise bad_request("messages must be a non-empty list", "messages")
        for i, m in enumerate(self.messages):
            if not m.text():
                raise bad_request(f"messages[{i}].content must not be empty", f"messages.{i}.content")
        if self.mode() == "sot" and all(m.role != "user" for m in self.messages):
            raise bad_request("aspd.mode 'sot' answers the last user message: give one", "messages")
        if self.tools:
            raise bad_request("tools are not supported", "tools")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise bad_request("only response_format type 'text' is supported", "response_format")

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        # Chat templates know "system"; "developer" is OpenAI's newer name for the same role.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    _unicode_prompt = field_validator("prompt", "suffix")(_valid_unicode)

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise bad_request("prompt must not be empty", "prompt")
            if isinstance(self.prompt[0], str) and len(self.prompt) != 1:
                raise bad_request("only one prompt per request is supported", "prompt")
        if self.echo:
            raise bad_request("echo is not supported", "echo")
        if self.best_of not in (None, 1):
            raise bad_request("only best_of=1 is supported", "best_of")
        if self.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if self.mode() == "sot" and isinstance(self.prompt, list) and isinstance(self.prompt[0], int):
            raise bad_request("aspd.mode 'sot' writes its own prompts from the question: give the prompt as text",
                              "prompt")

    def limit(self) -> int | None:
        return self.max_tokens


_FIELDS = frozenset(f for m in (ChatRequest, CompletionRequest, ChatMessage, TextPart, AspdOptions, StreamOptions)
                    for f in m.model_fields)


def _param(err: Any) -> str:
    """The parameter path of a validation error, e.g. "messages.0.content". Pydantic puts a union member's tag
    ("str", "list[str]", ...) into the location; the path ends before it, at the field the client wrote."""
    loc: Sequence[int | str] = err["loc"]
    if err["type"] == "extra_forbidden":
        return ".".join(map(str, loc))
    parts: list[str] = []
    for x in loc:
        if isinstance(x, str) and x not in _FIELDS:
            break
        parts.append(str(x))
    return ".".join(parts)


def parse_request(cls: type[_Common], payload: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the parameter."""
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        req = cls.model_validate(payload)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        param = _param(errors[0]) or None
        if errors[0]["type"] == "missing":
            raise bad_request(f"missing required parameter: {param!r}", param) from None
        # A value no member of a union accepts gets one error per member: name them all.
        msgs = dict.fromkeys(err["msg"].removeprefix("Value error, ") for err in errors if _param(err) == param)
        raise bad_request(f"invalid value for {param!r}: {', or '.join(msgs)}", param) from None
    req.check_unsupported()
    return req
