"""Prompt sets shipped inside registry packages, converted to prompt records.

chatterbot-corpus (PyPI, BSD-3-Clause): YAML dialog files; the first line of each conversation is a user turn.
Only the topical English files are read (trivia, coding, computers, science, history, tech support); the rest
is chit-chat addressed to the bot ("are you sentient?", greetings, gossip). Turns shorter than 15 characters
and ones that are neither a question nor a request are skipped; repeats are left to `aspd prompts merge`.
"""

from __future__ import annotations

import re
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

CHATTERBOT_FILES = {  # file stem -> category
    "trivia": "factual", "coding": "coding", "computers": "knowledge", "science": "stem",
    "history": "humanities", "tech_support": "howto",
}
_ASKS = re.compile(r"\?\s*$|^(who|what|when|where|why|how|which|can|could|would|is|are|do|does|did|tell|explain|"
                   r"write|give|name|my|i)\b", re.IGNORECASE)
MIN_CHARS = 15


def chatterbot_prompts(wheel: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(prompt records, provenance) from a chatterbot-corpus wheel; ValueError names what is wrong."""
    import yaml

    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{wheel}: not a readable wheel ({e})") from None
    with zf:
        meta_name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            raise ValueError(f"{wheel}: no METADATA (not a wheel?)")
        meta = Parser().parsestr(zf.read(meta_name).decode("utf-8"))
        if (meta["Name"] or "").lower().replace("_", "-") != "chatterbot-corpus":
            raise ValueError(f"{wheel}: package is {meta['Name']!r}, expected chatterbot-corpus")
        version = meta["Version"]
        source = f"chatterbot-corpus=={version}"
        records, per_file = [], {}
        for stem, category in CHATTERBOT_FILES.items():
            name = f"chatterbot_corpus/data/english/{stem}.yml"
            if name not in zf.namelist():
                raise ValueError(f"{wheel}: {name} is missing")
            data = yaml.safe_load(zf.read(name).decode("utf-8"))
            kept = 0
            for n, conv in enumerate(data.get("conversations") or [], 1):
                first = conv[0] if isinstance(conv, list) and conv else None
                if not isinstance(first, str):
                    continue
                text = " ".join(first.split())
                if len(text) < MIN_CHARS or not _ASKS.search(text):
                    continue
                records.append({"id": f"chatterbot-{stem}-{n}", "source": source, "category": category,
                                "multipart": False, "prompt": text})
                kept += 1
            per_file[stem] = kept
    return records, {"package": "chatterbot-corpus", "version": version, "license": "BSD-3-Clause",
                     "files": per_file, "records": len(records)}
