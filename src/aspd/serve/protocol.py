"""Request bodies of the OpenAI-compatible API and the error shape OpenAI clients expect.

Models are strict (no "0.5" for a float, no `true` for an int) so that a wrong type is a 400, as the
OpenAI API does, rather than a silent coercion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


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


class AspdOptions(BaseModel):
    """The `aspd` request extension: decoding mode, structure limits, per-stream deltas when streaming."""

    model_config = ConfigDict(strict=True, extra="forbid")

    mode: Literal["hybrid", "serial"] = "hybrid"
    max_branches: int | None = Field(None, ge=1)
    max_branch_tokens: int | None = Field(None, ge=2)  # room for one body token and <|/branch|>
    max_groups: int | None = Field(None, ge=0)
    branch_deltas: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored, as most OpenAI-compatible servers do."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extra body fields (vLLM spelling); top_k -1 means "off" there, 0 here.
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0)
    # Accepted for compatibility when neutral; anything else is refused rather than silently ignored.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, Any] | None = None
    aspd: AspdOptions | None = None

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


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

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

    def limit(self) -> int | None:
        return self.max_tokens


def parse_request(cls: type[_Common], payload: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the parameter."""
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        req = cls.model_validate(payload)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        param = ".".join(str(x) for x in err["loc"]) or None
        if err["type"] == "missing":
            raise bad_request(f"missing required parameter: {param!r}", param) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise bad_request(f"invalid value for {param!r}: {msg}", param) from None
    req.check_unsupported()
    return req
