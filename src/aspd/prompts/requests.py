"""Generation requests: each asks the teacher for ONE realistic user message of a given category, form and topic.

Categories take turns (so they are balanced), each category alternates its multipart flag, and forms and topics
are dealt from reshuffled decks, so every topic is used before any repeats. Two worked examples (one of the
same category but another form) go before the request as earlier chat turns: a small model copies that shape better than it
follows a long instruction.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from aspd.prompts.seeds import (
    ASKERS,
    CATEGORIES,
    EXAMPLES,
    LANGUAGES,
    SYSTEM,
    TONES,
    TOPICS,
    Category,
    Example,
    Form,
)

SOURCE = "aspd-synth"
T = TypeVar("T")


def _deck(items: Sequence[T], rng: random.Random) -> Iterator[T]:
    """Endless draws: each pass over the items in a fresh random order."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def request_text(category: Category, topic: str, form: Form | str, asker: str, tone: str) -> str:
    form_text = form.text if isinstance(form, Form) else form
    return (f"Category: {category.label}\nTopic: {topic}\nForm: the message {form_text}\n"
            f"Who asks: {asker}\nTone: {tone}\n\nWrite the message.")


def _example_turns(ex: Example) -> list[dict[str, str]]:
    cat = next(c for c in CATEGORIES if c.name == ex.category)
    return [{"role": "user", "content": request_text(cat, ex.topic, ex.form, ex.asker, ex.tone)},
            {"role": "assistant", "content": ex.message}]


def build_requests(n: int, seed: int = 0, categories: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`n` request records {id, source, category, multipart, topic, form, messages}; same seed, same records."""
    if n < 1:
        raise ValueError("the number of requests must be at least 1")
    cats = [c for c in CATEGORIES if categories is None or c.name in categories]
    if not cats:
        raise ValueError(f"no known category among {list(categories or [])}; known: {[c.name for c in CATEGORIES]}")
    rng = random.Random(seed)
    topics = {c.name: _deck([t for p in c.pools for t in TOPICS[p]], rng) for c in cats}
    forms = {(c.name, mp): _deck([f for f in c.forms if f.multipart == mp], rng) for c in cats for mp in (True, False)}
    first_flag = {c.name: rng.random() < 0.5 for c in cats}
    drawn = {c.name: 0 for c in cats}
    settings = {c.name: _deck(TOPICS[c.setting], rng) for c in cats if c.setting}
    langs = _deck(LANGUAGES, rng)
    same = {c.name: [e for e in EXAMPLES if e.category == c.name] for c in cats}
    out = []
    for i in range(n):
        cat = cats[i % len(cats)]
        multipart = first_flag[cat.name] == (drawn[cat.name] % 2 == 0)
        drawn[cat.name] += 1
        form = next(forms[(cat.name, multipart)])
        topic = next(topics[cat.name])
        if cat.name == "coding":
            topic = f"{topic} ({next(langs)})"
        if cat.setting:
            topic = f"{topic}; setting: {next(settings[cat.name])}"
        # the same-category example shows another form, so its wording is not simply copied onto a new topic
        own = [e for e in same[cat.name] if e.form != form.text] or same[cat.name]
        shots = [rng.choice(own), rng.choice([e for e in EXAMPLES if e.category != cat.name])]
        rng.shuffle(shots)
        messages = [{"role": "system", "content": SYSTEM}]
        for ex in shots:
            messages += _example_turns(ex)
        messages.append({"role": "user", "content": request_text(cat, topic, form, rng.choice(ASKERS),
                                                                 rng.choice(TONES))})
        out.append({"id": f"synth-s{seed}-{i:06d}", "source": SOURCE, "category": cat.name, "multipart": multipart,
                    "topic": topic, "form": form.text, "messages": messages})
    return out
