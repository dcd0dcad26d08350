"""The input records aspd reads, one pydantic model per record type, and one way to turn a model's errors
into the one-line message a `file:line` error carries.

- `MessagesRecord`: {messages: [{role, content}, ...]}, a final assistant turn being the answer;
- `QuestionRecord`: {question | prompt | instruction, context | input?, system?, history?: [{question, answer}]};
  `chat_record` picks the one a record is (distill prompts, transform samples, training data, PASTA data);
- `QuestionTurns`: a bench question, {turns: [...]} or {question | prompt}.

And the records aspd writes and reads back (`--resume`, conversion, summaries):

- `TransformOutput`: a line of `aspd transform`'s output, {id, parallel?, markup?, candidates?, stats?};
- `DistillAnswer`: a line of `aspd distill`'s output (or its dropped file), {id, answer, finish?}.

Other fields are kept (`extra="allow"`): records carry ids, sources and categories through the tools.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from aspd.jsonl import record_id

__all__ = ["DistillAnswer", "MessagesRecord", "QuestionRecord", "QuestionTurns", "RecordError", "TransformOutput",
           "chat_record", "question_turns"]


class RecordError(ValueError):
    """A record that is not of its type; the message says what is wrong, in one line."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    # Per top-level field, the message for any problem under it (pydantic's own is long and names internals).
    problems: ClassVar[dict[str, str]] = {}

    @classmethod
    def read(cls, obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise RecordError("line is not a JSON object")
        try:
            return cls.model_validate(obj)
        except ValidationError as e:
            raise RecordError(cls._problem(e.errors()[0])) from None

    @classmethod
    def _problem(cls, err: Any) -> str:
        field = cls._field_of(str(err["loc"][0])) if err["loc"] else ""
        if cls.problems.get(field):
            return cls.problems[field]
        where = ".".join(str(k) for k in err["loc"])
        if err["type"] == "value_error" or not where:  # our own validators write whole messages
            return str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            return f"missing '{where}'"
        msg = re.sub(r" or instance of \w+", "", str(err["msg"]))  # a dict, not "an instance of TransformStats"
        got = json.dumps(err["input"], ensure_ascii=False, default=str)
        return f"'{where}': {msg[:1].lower()}{msg[1:]}, got {got[:40]}"

    @classmethod
    def _field_of(cls, key: str) -> str:
        """The field an input key (a field name or one of its aliases) fills."""
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if key == name or (isinstance(alias, AliasChoices) and key in alias.choices):
                return name
        return key


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    role: StrictStr
    content: StrictStr


class MessagesRecord(_Record):
    problems = {"messages": "'messages' must be a list of {role, content} objects with string values"}
    messages: list[Message]

    @model_validator(mode="after")
    def _ends_with_the_question(self) -> MessagesRecord:
        msgs = self.messages[:-1] if self.messages and self.messages[-1].role == "assistant" else self.messages
        if not msgs or msgs[-1].role == "assistant":
            raise ValueError("'messages' must end with the question (a non-assistant turn) before the answer")
        return self

    def chat(self) -> tuple[list[dict[str, str]], str | None]:
        """(the conversation before the answer, the answer if the record holds one)."""
        messages = [{"role": m.role, "content": m.content} for m in self.messages]
        answer = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
        return messages, answer


class Turn(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    question: Any
    answer: Any


class QuestionRecord(_Record):
    problems = {"question": "needs 'messages' or a non-empty 'question' (or 'prompt' / 'instruction')",
                "context": "'context' must be a string",
                "history": "'history' must be a list of {question, answer} objects"}
    question: StrictStr = Field(validation_alias=AliasChoices("question", "prompt", "instruction"))
    context: StrictStr | None = None
    system: Any = None
    history: list[Turn] = []

    @model_validator(mode="before")
    @classmethod
    def _alpaca(cls, obj: Any) -> Any:
        # Alpaca's `input` stands for `context`; an empty context or history is none.
        if isinstance(obj, dict):
            obj = {**obj, "context": obj.get("context") or obj.get("input") or None,
                   "history": obj.get("history") or []}
        return obj

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("blank")
        return question

    def chat(self) -> list[dict[str, str]]:
        """The conversation up to the question (earlier answers as they are written: see `aspd.sample`)."""
        question = f"{self.question}\n\n{self.context}" if self.context else self.question  # instruction, then input
        messages = [{"role": "system", "content": str(self.system)}] if self.system else []
        for turn in self.history:
            messages += [{"role": "user", "content": str(turn.question)},
                         {"role": "assistant", "content": str(turn.answer)}]
        return [*messages, {"role": "user", "content": question}]


def chat_record(obj: Any) -> MessagesRecord | QuestionRecord:
    """The record as whichever chat record it is; RecordError saying what is wrong."""
    if isinstance(obj, dict) and "messages" in obj:
        return MessagesRecord.read(obj)
    return QuestionRecord.read(obj)


class QuestionTurns(_Record):
    problems = {"turns": "'turns' must be a non-empty list of strings"}
    turns: list[StrictStr] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _single_question(cls, obj: Any) -> Any:
        if isinstance(obj, dict) and "turns" not in obj:
            question = next((obj[k] for k in ("question", "prompt") if isinstance(obj.get(k), str)
                             and obj[k].strip()), None)
            if question is None:
                raise ValueError("needs 'turns' (a list of user messages) or a 'question' string")
            return {**obj, "turns": [question]}
        if isinstance(obj, dict) and isinstance(obj["turns"], list) and obj["turns"] \
                and not all(isinstance(t, str) and t.strip() for t in obj["turns"]):
            raise ValueError("every item of 'turns' must be a non-empty string")
        return obj


def question_turns(obj: Any) -> tuple[str, ...]:
    """A bench question's turns; RecordError saying what is wrong."""
    return tuple(QuestionTurns.read(obj).turns)


# ------------------------------------------------------------------------------------ records aspd writes


class _Written(_Record):
    id: str  # as `aspd.jsonl.record_id` reads it: a non-empty string or an integer, never null

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str | None:
        return record_id({"id": value})


class _Counts(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TransformStats(_Counts):
    """The per-sample counts `aspd.pipeline.runner.summarize` adds up (a null dict or list is an empty one)."""
    candidates: StrictInt = 0
    passed_checks: StrictInt = 0
    passed_independence: StrictInt = 0
    passed_integrity: StrictInt = 0
    passed_answer: StrictInt = 0
    llm_calls: StrictInt = 0
    cache_hits: StrictInt = 0
    prompt_tokens: StrictInt = 0
    completion_tokens: StrictInt = 0
    groups: StrictInt = 0
    branches: StrictInt = 0
    serial_words: StrictInt = 0
    parallel_words: StrictInt = 0
    groups_proposed: StrictInt = 0
    dp: StrictFloat = 0.0
    drops: dict[str, StrictInt] | None = None
    failures: dict[str, StrictInt] | None = None
    skipped_stages: list[StrictStr] | None = None


class TransformCandidate(_Counts):
    checks: dict[str, dict[str, Any]] | None = None  # check name -> {ok, ...}
    reached: list[StrictStr] | None = None  # the stages it passed


class TransformOutput(_Written):
    """One line of `aspd transform`'s output: the input record plus what the pipeline made of it. Markup is
    checked where it is used (`aspd.pipeline.convert`), which skips a record it cannot use."""
    parallel: StrictBool = False
    candidates: list[TransformCandidate] | None = None
    stats: TransformStats | None = None


class DistillAnswer(_Written):
    """One line of `aspd distill`'s output: the prompt record plus the answer and why generation stopped."""
    answer: StrictStr
    finish: StrictStr = "stop"  # "stop", or "length" for an answer the length limit cut
