"""Turn the teacher's replies to generation requests into prompt records, dropping replies that are not one message.

A reply is cleaned (a leading "Sure, here is..." line, labels such as "Question:", wrapping quotes and bold
are removed), then dropped with a reason when it is cut by the length limit, empty, too short or long, not
English, code where none belongs, several questions instead of one, an answer or a comment instead of a
question, a statement that asks for nothing, the request echoed back, or a copy of a worked example.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aspd.prompts.seeds import EXAMPLES
from aspd.prompts.text import exact_key
from aspd.records import DistillAnswer, RecordError

MIN_CHARS, MIN_WORDS = 12, 3
MAX_CHARS = {"extraction": 1400, "coding": 1400}  # these may carry a text or a snippet
MAX_CHARS_DEFAULT = 700

# a first line that announces the message ("Sure! Here's a realistic message:"); "Here are four statements:"
# opening a user's own message is kept
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely|here(?:'s| is| are)|below is)\b[^\n]*"
                       r"\b(?:message|question|request|prompt|query)\b[^\n]*[:!.]\s*\n", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:[*_#]+\s*)?(?:the\s+)?(?:user(?:'s)?\s+)?(?:message|question|prompt|request|query|user|q)"
                    r"\s*(?:\d+\s*)?(?:[*_]+\s*)?[:：]\s*(?:[*_]+\s*)?", re.IGNORECASE)
_QUOTES = [('"', '"'), ("\u201c", "\u201d"), ("'", "'"), ("`", "`"), ("**", "**"), ("*", "*")]
_ANSWER_LABEL = re.compile(r"^\s*(?:[*_]+\s*)?(answer|response|assistant|solution|a)\s*(?:[*_]+\s*)?[:：]",
                           re.IGNORECASE | re.MULTILINE)
_ANSWER_START = re.compile(r"^(sure|certainly|of course|absolutely|great question|as an ai|i'm sorry|i am sorry|"
                           r"i cannot|i can't|i'd be happy|i would be happy)\b", re.IGNORECASE)
_ECHO = re.compile(r"^\s*(category|topic|form|who asks|tone)\s*:|write the message", re.IGNORECASE | re.MULTILINE)
_META = re.compile(r"\b(this message|the user's message|the message asks|as requested|realistic message)\b",
                   re.IGNORECASE)
_ITEM_QUESTION = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+.*\?\s*$", re.MULTILINE)
_FENCE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_WORD = re.compile(r"[A-Za-z\u00c0-\u024f']+")
_ENGLISH = frozenset(
    "the a an to of and in is are for how what why can could you i my me do does with on it this that be should "
    "which who when where write give explain tell make please your from about or would was were will if at as "
    "there their we our us any some all much many not no have has".split())
_OTHER = frozenset(  # function words of the European languages most often mistaken for English by letters alone
    "de la el los las que y en por para es un una del al se le les des et est une du au der die das und ist nicht "
    "ein eine mit zu il di che per non sono não uma com os para het een van ik je".split())
_VERBS = (r"write|give|list|explain|describe|compare|tell|help|suggest|recommend|create|make|draft|rewrite|fix|"
          r"proofread|correct|check|review|summari[sz]e|translate|plan|show|find|calculate|compute|solve|pretend|act|"
          r"imagine|play|generate|design|build|implement|extract|pull|identify|classify|convert|outline|compose|"
          r"provide|turn|read|name|let's|let us")
# A message without a question mark must still ask: a sentence opening with a request verb, or a polite ask.
# (Answers also contain "make" and "need", but rarely open a sentence with an imperative.)
_REQUEST = re.compile(rf"(?:^|[.!:;\n]\s*|\bplease\s+)(?:{_VERBS})\b|\b(?:can|could|would|will) you\b|"
                      r"\bi(?:'d| would) like\b|\bi (?:need|want) (?:you|to know|help|a|an|some)\b|\bhelp me\b",
                      re.IGNORECASE)
# extraction: the message must ask something about its text
_EXTRACT_ASK = re.compile(r"\?|\b(?:extract|list|summari[sz]e|identify|pull|json|tone|classify|find|which|what|"
                          r"when|who|where|how many|how much)\b", re.IGNORECASE)
_ASSISTANT_SPEAK = re.compile(r"\bhow (?:may|can|could) i (?:assist|help) you\b|\bwhat can i do for you\b",
                              re.IGNORECASE)
_EXAMPLE_KEYS = frozenset(exact_key(e.message) for e in EXAMPLES)


def _unwrap(text: str) -> str:
    """Strip labels and wrapping quotes / emphasis until nothing changes."""
    while True:
        before = text
        text = _PREAMBLE.sub("", text, count=1).strip()
        text = _LABEL.sub("", text, count=1).strip()
        for left, right in _QUOTES:
            inner = text[len(left) : -len(right)] if len(text) > len(left) + len(right) else ""
            if text.startswith(left) and text.endswith(right) and left not in inner and right not in inner:
                text = inner.strip()
        if text == before:
            return text


def is_english(text: str) -> bool:
    """Mostly Latin letters, and (from four words on) more English function words than French, Spanish,
    German, Italian, Portuguese or Dutch ones."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return False
    latin = sum(ch.isascii() or "\u00c0" <= ch <= "\u024f" for ch in letters)
    if latin / len(letters) < 0.9:
        return False
    words = [w.lower() for w in _WORD.findall(_FENCE.sub(" ", text))]
    english = sum(w in _ENGLISH for w in words)
    return len(words) < 4 or english > sum(w in _OTHER for w in words)


def clean_reply(answer: str, category: str, finish: str = "stop") -> tuple[str | None, str]:
    """(the cleaned message, "ok") or (None, the reason it was dropped)."""
    if finish == "length":
        return None, "cut_by_length_limit"
    text = _unwrap(answer.strip())
    if not text:
        return None, "empty"
    if _ECHO.search(text):
        return None, "echoed_request"
    if _ANSWER_START.match(text) or _ANSWER_LABEL.search(text) or _META.search(text) or _ASSISTANT_SPEAK.search(text):
        return None, "answer_or_comment"
    if len(_ITEM_QUESTION.findall(text)) >= 2 or re.search(r"^\s*(?:message|question)\s*2\b", text, re.I | re.M):
        return None, "several_questions"
    fences = _FENCE.findall(text)
    if fences:
        prose = _FENCE.sub(" ", text).strip()
        if category != "coding" or len(prose) < 20:
            return None, "code"
    if not is_english(text):
        return None, "not_english"
    if len(text) < MIN_CHARS or len(_WORD.findall(text)) < MIN_WORDS:
        return None, "too_short"
    if len(text) > MAX_CHARS.get(category, MAX_CHARS_DEFAULT):
        return None, "too_long"
    if ("?" not in text and not _REQUEST.search(text)) or (category == "extraction" and not _EXTRACT_ASK.search(text)):
        return None, "not_a_request"
    if exact_key(text) in _EXAMPLE_KEYS:
        return None, "copied_example"
    return text, "ok"


@dataclass
class Collected:
    records: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    by_category: dict[str, Counter[str]] = field(default_factory=dict)


def collect(rows: list[tuple[str, dict[str, Any]]]) -> Collected:
    """Prompt records from answered requests; rows are (where, record) for error messages."""
    out = Collected()
    for where, obj in rows:
        try:
            reply = DistillAnswer.read(obj)
        except RecordError as e:
            raise ValueError(f"{where}: {e} (expected a record written by `aspd distill`)") from None
        if "category" not in obj:
            raise ValueError(f"{where}: missing 'category' (expected a record written by `aspd distill`)")
        category = str(obj["category"])
        text, reason = clean_reply(reply.answer, category, reply.finish)
        out.reasons[reason] += 1
        out.by_category.setdefault(category, Counter())[reason] += 1
        if text is not None:
            out.records.append({"id": reply.id, "source": str(obj.get("source", "aspd-synth")),
                                "category": category, "multipart": bool(obj.get("multipart", False)),
                                "prompt": text})
    return out
