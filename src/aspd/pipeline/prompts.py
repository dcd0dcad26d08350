"""The project's own prompts for the four pipeline stages (protocol after the paper's section 3.1).

Reply protocol (what parsing.py reads):

- Rewrite: a status line `PARALLEL: yes` or `PARALLEL: no`, then the whole answer with markup between a
  line `<<<ANSWER` and a line `ANSWER>>>`. With `no`, the block may be left out.
- Judges (independence, integrity, answer): two lines, `VERDICT: true|false` and `REASON: <one sentence>`.

Templates use `{{name}}` placeholders (double braces, so answers full of code braces need no escaping).
They are filled in one pass: text coming from the data is never scanned for placeholders again.
A `--prompts FILE` (JSON object, any subset of the keys of `Prompts`) replaces the defaults one by one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

__all__ = ["DEFAULT_PROMPTS", "PLACEHOLDERS", "PromptError", "Prompts", "fill", "format_branches",
           "format_conversation", "load_prompts", "span_messages"]

REWRITE_SYSTEM = """\
You prepare answers for a language model that can write several independent parts of an answer at the \
same time. Your task is to find such parts in an existing answer and mark them, without changing the \
answer itself.

How to mark:
- Wrap a set of parts that can be written independently of each other in <branchgroup> and </branchgroup>.
- Put each part in <branch title="...">...</branch>. The title is a short label of a few words, unique \
within its group; it is not part of the answer text.
- When a part starts with a list marker, a heading or a bold lead ("- By tram:", "1. **Diet**:", "## Sleep"), \
that start is the title, written exactly as in the answer, and the branch holds only the text after it. \
Deleting your tags, with such titles kept in place, must give back the answer.
- A group holds two or more branches. Groups never sit inside other groups or branches.
- Everything outside a group stays serial text, exactly as it was.
- Put every tag on a line of its own.

What can be a branch: list items, alternatives, examples, pros and cons, or sections that each deal with \
a separate point, when each one could be written knowing only the question and the text before the \
group. Keep text serial when a part refers to another part, continues it, uses its result (a calculation \
step that needs the previous step), or only makes sense in a fixed order. Introductions and conclusions \
that cover all the parts stay serial, outside the group. When in doubt, leave text serial.

Never edit the content: do not add, drop, reorder, correct, shorten or translate anything, and keep the \
whitespace and formatting (list markers, headings, code). Deleting your tags (head titles kept in place) must give back the original \
answer word for word.

Reply format, nothing else:
PARALLEL: yes
<<<ANSWER
(the complete answer with your tags)
ANSWER>>>

If the answer has no independent parts, reply with the single line:
PARALLEL: no

Example. Original answer:
You can reach the old town in three ways.
- By tram: line 4 stops at the main square every ten minutes.
- By bike: the river path is flat and takes about twenty minutes.
- On foot: it is a 40-minute walk through the park.
Pick whichever suits the weather.

Reply:
PARALLEL: yes
<<<ANSWER
You can reach the old town in three ways.
<branchgroup>
<branch title="- By tram:"> line 4 stops at the main square every ten minutes.</branch>
<branch title="- By bike:"> the river path is flat and takes about twenty minutes.</branch>
<branch title="- On foot:"> it is a 40-minute walk through the park.</branch>
</branchgroup>
Pick whichever suits the weather.
ANSWER>>>"""

REWRITE_USER = """\
Conversation so far:
{{question}}

Answer to mark (between the ORIGINAL lines):
<<<ORIGINAL
{{answer}}
ORIGINAL>>>"""

_VERDICT_FORMAT = """\
Reply with exactly two lines and nothing else:
VERDICT: true
REASON: one short sentence
(write false instead of true when the check fails)."""

INDEPENDENCE_SYSTEM = f"""\
You review a plan to generate parts of an answer in parallel. Each branch below would be written at the \
same time as its siblings, seeing only the conversation and the answer text that comes before the group, \
never the other branches.

Say true when every branch can be written correctly that way: no branch mentions, continues, repeats \
work from, or needs a result or a detail of a sibling, and the branches do not rely on a particular \
order among themselves. Say false when at least one branch depends on another.

{_VERDICT_FORMAT}"""

INDEPENDENCE_USER = """\
Conversation:
{{question}}

Answer text before the group:
<<<BEFORE
{{before}}
BEFORE>>>

Branches of the group:
{{branches}}"""

INTEGRITY_SYSTEM = f"""\
You compare two versions of an answer: the original and a rewritten one. Check structure and \
completeness only: the rewritten version must contain every part of the original, in the same order, \
with the same organisation (paragraphs, lists, headings, code blocks), and nothing may be added, dropped \
or duplicated. Ignore differences in whitespace and line breaks.

Say true when the structure and content are preserved, false otherwise.

{_VERDICT_FORMAT}"""

ANSWER_SYSTEM = f"""\
You compare two versions of an answer to the same conversation: the original and a rewritten one. Check \
meaning only: the rewritten version must answer the question the same way, with the same facts, numbers, \
code, steps and final conclusion. Ignore differences in whitespace and line breaks.

Say true when it gives the same answer, false when anything that matters differs.

{_VERDICT_FORMAT}"""

COMPARE_USER = """\
Conversation:
{{question}}

Original answer:
<<<ORIGINAL
{{original}}
ORIGINAL>>>

Rewritten answer:
<<<REWRITTEN
{{candidate}}
REWRITTEN>>>"""

SPAN_SYSTEM = """\
You help prepare answers for a language model that can write several independent parts of an answer at the \
same time. You get a question and an answer split into numbered paragraphs. Find runs of consecutive \
paragraphs that each cover a separate, self-contained point (an aspect, option, tip, reason, example, or the \
pros and the cons), where each point could be written knowing only the question and the text before the run, \
without seeing the other points.

Rules:
- A group holds two or more branches. A branch is one paragraph, or a few consecutive paragraphs about the \
same point. The branches of a group follow each other directly, and groups never overlap.
- A branch is ONE point. Never put the opening paragraph (usually [1]) or the closing one in a group, and \
never make one branch of "everything after the introduction".
- Keep out of every group: opening and closing sentences, paragraphs that introduce or sum up the points, \
steps that need the result of an earlier step, paragraphs that refer back to another one ("This", "As \
mentioned above", "However"), and code blocks.
- Give each branch a title of 2 to 6 words that names its point, as a heading would. Do not copy the first \
words of the paragraph, and do not write numbers or words like "Point 1" or "Title".
- If nothing can be grouped, reply {"groups": []}.

Reply with one JSON object and nothing else, in this form:
{"groups": [[{"paragraphs": [2], "title": "..."}, {"paragraphs": [3], "title": "..."}, {"paragraphs": [4], \
"title": "..."}]]}

Example 1.
Question: How can a small cafe cut its energy bill?
Answer, paragraph by paragraph:
[1] A cafe can save a good share of its energy costs with a few changes.
[2] Coffee machines and display fridges run all day. Switching the second espresso machine off outside the \
morning rush and fitting night blinds to open fridges saves several kilowatt-hours a day.
[3] LED bulbs use a fraction of the power of halogen spots and last for years, and motion sensors keep \
storerooms and toilets dark when nobody is there.
[4] Heat escapes through the door every time a customer comes in. A draught lobby or a simple air curtain \
keeps the warm air inside in winter.
[5] Taken together, these changes can cut the bill by a fifth.
Reply:
{"groups": [[{"paragraphs": [2], "title": "Kitchen appliances"}, {"paragraphs": [3], "title": "Efficient \
lighting"}, {"paragraphs": [4], "title": "Keeping heat inside"}]]}

Example 2.
Question: How do I start a Python project with a virtual environment?
Answer, paragraph by paragraph:
[1] Create the environment in your project folder:
[2] (code block, 1 line; never part of a group)
[3] Then activate it, so that pip installs into it, and install what you need with pip install.
[4] Finally, freeze the versions you installed into requirements.txt so others can recreate it.
Reply:
{"groups": []}

Example 3.
Question: Should I learn the guitar or the piano first?
Answer, paragraph by paragraph:
[1] Both are good first instruments; it depends on what you want from them.
[2] **Guitar**
A guitar is cheap to start with, easy to carry and fits most popular music. Sore fingertips make the first \
weeks hard, but simple chords come quickly.
[3] **Piano**
The keyboard lays out music theory in front of you, and a beginner gets a clean sound from the first day. A \
good instrument costs more and does not travel.
[4] Whichever you pick, practise a little every day.
Reply:
{"groups": [[{"paragraphs": [2], "title": "Learning the guitar"}, {"paragraphs": [3], "title": "Learning the \
piano"}]]}"""

SPAN_USER = """\
Question:
{{question}}

Answer, paragraph by paragraph:
{{paragraphs}}

Reply with the JSON object only: one branch per point, openings and closings outside the groups."""

# The placeholders each template must contain (a --prompts override is checked against these).
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "rewrite_system": (),
    "rewrite_user": ("answer",),
    "independence_system": (),
    "independence_user": ("branches",),
    "integrity_system": (),
    "integrity_user": ("original", "candidate"),
    "answer_system": (),
    "answer_user": ("original", "candidate"),
    "span_system": (),
    "span_user": ("paragraphs",),
}
_KNOWN = {"question", "answer", "before", "branches", "original", "candidate", "paragraphs"}


class PromptError(ValueError):
    """A prompts file that cannot be used."""


@dataclass(frozen=True)
class Prompts:
    rewrite_system: str = REWRITE_SYSTEM
    rewrite_user: str = REWRITE_USER
    independence_system: str = INDEPENDENCE_SYSTEM
    independence_user: str = INDEPENDENCE_USER
    integrity_system: str = INTEGRITY_SYSTEM
    integrity_user: str = COMPARE_USER
    answer_system: str = ANSWER_SYSTEM
    answer_user: str = COMPARE_USER
    span_system: str = SPAN_SYSTEM
    span_user: str = SPAN_USER

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


DEFAULT_PROMPTS = Prompts()

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, **values: str) -> str:
    """Replace `{{name}}` with values[name] in one pass; unknown names stay as written."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def load_prompts(path: str | Path | None) -> Prompts:
    """Defaults, with the keys of a JSON object file replacing them (unknown keys are an error)."""
    if path is None:
        return DEFAULT_PROMPTS
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PromptError(f"cannot read prompts file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise PromptError(f"{path}: expected a JSON object with keys {sorted(PLACEHOLDERS)}")
    names = {f.name for f in fields(Prompts)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise PromptError(f"{path}: unknown prompt keys {unknown}; known: {sorted(names)}")
    for key, value in obj.items():
        if not isinstance(value, str) or not value.strip():
            raise PromptError(f"{path}: {key!r} must be a non-empty string")
        used = set(_PLACEHOLDER.findall(value))
        missing = [p for p in PLACEHOLDERS[key] if p not in used]
        if missing:
            raise PromptError(f"{path}: {key!r} lacks placeholder(s) {['{{' + p + '}}' for p in missing]}")
        strange = sorted(used - _KNOWN)
        if strange:
            raise PromptError(f"{path}: {key!r} uses unknown placeholder(s) {strange}; known: {sorted(_KNOWN)}")
    return replace(DEFAULT_PROMPTS, **obj)


def format_conversation(messages: list[dict[str, str]]) -> str:
    """The conversation before the answer as plain text; a lone user turn is shown as is."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0].get("content", "")
    return "\n\n".join(f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in messages)


def format_branches(titles: list[str], texts: list[str]) -> str:
    return "\n\n".join(
        f'Branch {i} (title "{t}"):\n<<<BRANCH\n{b}\nBRANCH>>>' for i, (t, b) in enumerate(zip(titles, texts, strict=True), 1)
    )


# ------------------------------------------------------------------------------------------ chat messages
# Shared by every LLM backend, so the OpenAI-compatible and the local model see identical requests.

Message = dict[str, str]


def rewrite_messages(prompts: Prompts, conversation: list[Message], answer: str) -> list[Message]:
    user = fill(prompts.rewrite_user, question=format_conversation(conversation), answer=answer)
    return [{"role": "system", "content": prompts.rewrite_system}, {"role": "user", "content": user}]


def independence_messages(prompts: Prompts, conversation: list[Message], before: str,
                          titles: list[str], texts: list[str]) -> list[Message]:
    user = fill(prompts.independence_user, question=format_conversation(conversation),
                before=before if before.strip() else "(nothing: the group starts the answer)",
                branches=format_branches(titles, texts))
    return [{"role": "system", "content": prompts.independence_system}, {"role": "user", "content": user}]


def span_messages(prompts: Prompts, conversation: list[Message], paragraphs: str) -> list[Message]:
    """The span rewriter's request: the conversation and the answer's numbered paragraphs."""
    user = fill(prompts.span_user, question=format_conversation(conversation), paragraphs=paragraphs)
    return [{"role": "system", "content": prompts.span_system}, {"role": "user", "content": user}]


def compare_messages(prompts: Prompts, kind: str, conversation: list[Message], original: str,
                     candidate: str) -> list[Message]:
    """`kind` is "integrity" or "answer": same user layout, different question asked."""
    system, template = ((prompts.integrity_system, prompts.integrity_user) if kind == "integrity"
                        else (prompts.answer_system, prompts.answer_user))
    user = fill(template, question=format_conversation(conversation), original=original, candidate=candidate)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
