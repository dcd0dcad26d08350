"""The fast engine's compiled decode step: the bucketed step (cache write, device-built mask, model forward)
compiled by torch.compile (inductor), which fuses the model's small kernels; on CUDA each bucket's compiled step is
then captured as a CUDA graph by `StaticKV`, as the eager step is.

Shapes are static per bucket: a step of k tokens is padded to the smallest bucket >= k and reads a fixed span of
slots (`StaticKV.spans`). The one-token step compiles with static shapes, and the first step of more tokens (of any
bucket: a prompt's prefill often comes first) one graph dynamic in k for all the others, so a model costs two
compilations per span, not one per bucket (three with `decode_attention`, whose branch at 64 rows splits the
dynamic graph).
`ASPD_COMPILE_SHAPES=static` compiles one static graph per bucket instead. Prefill and other long feeds stay eager
(rare, and of ever-changing length).

Where the step is compiled on CUDA, a model on SDPA is switched to `aspd.attention.decode_attention` (the same
attention, with steps of 2-64 rows as fused matrix products instead of torch's cuDNN kernel for them, which made
a forward of 2-16 rows cost 1.35-1.43x one of a single row on the H200); `ASPD_DECODE_ATTENTION=0` keeps SDPA.

Compiled code is cached on disk (inductor's FX graph and AOT autograd caches, under `<cache root>/inductor`),
so a second process (`aspd serve` restarted) skips code generation; dynamo still traces once per process. If
compiling fails for a model, the engine warns and goes on with the eager step (graphs kept).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

# `default` fuses without autotuning (compiles in seconds to a minute); `max-autotune-no-cudagraphs` also tunes
# matmul kernels (minutes). CUDA graphs are captured by the engine itself, so inductor's own are never wanted.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
ENV_MODE = "ASPD_COMPILE_MODE"
ENV_COMPILE = "ASPD_COMPILE"  # 1 / 0: the default for engines built without `compile=` (the CLI and the server)
ENV_SHAPES = "ASPD_COMPILE_SHAPES"  # dynamic (default: one graph for every bucket after the first) / static
COMPILE_SHAPES = ("dynamic", "static")
ENV_DECODE_ATTENTION = "ASPD_DECODE_ATTENTION"  # 0: keep torch's SDPA for every step (aspd.attention.decode_attention)
_RECOMPILE_LIMIT = 64  # several models and buckets in one process (tests, benchmarks) share the step's code


def resolve_compile(compile: bool | None, device: torch.device) -> bool:
    """None means $ASPD_COMPILE if set, else: compile on CUDA, where the step is launch-bound; on CPU compiling
    does not pay (measured, docs/design.md)."""
    if compile is not None:
        return bool(compile)
    env = os.environ.get(ENV_COMPILE, "").strip()
    if env:
        return _flag(ENV_COMPILE, env)
    return device.type == "cuda"


def compile_mode() -> str:
    return _one_of(ENV_MODE, os.environ.get(ENV_MODE, "default"), COMPILE_MODES)


def compile_shapes() -> str:
    return _one_of(ENV_SHAPES, os.environ.get(ENV_SHAPES, "dynamic"), COMPILE_SHAPES)


def decode_attention_on() -> bool:
    return _flag(ENV_DECODE_ATTENTION, os.environ.get(ENV_DECODE_ATTENTION, "1").strip())


def _flag(name: str, value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1; not {value!r}")
    return value == "1"


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; not {value!r}")
    return value


def enable_caches() -> str:
    """Point inductor's on-disk caches at `<cache root>/inductor` (unless the user chose a place) and turn them on."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    from aspd.models.cache import cache_dir

    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        default = os.path.abspath(default_cache_dir())
    except ImportError:  # an older torch: only an unset variable is ours to set
        default = None
    # torch writes its default into the variable once it has used it; only a different value is the user's choice.
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen or os.path.abspath(chosen) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    path = os.environ["TORCHINDUCTOR_CACHE_DIR"]

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autograd_cache"):
        inductor_config.autograd_cache = True
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, _RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * _RECOMPILE_LIMIT)
    return path


Step = Callable[..., torch.Tensor]


class CompiledStep:
    """`step(inputs, span, rows)` compiled, with the eager step as fallback. Records compile time per shape."""

    def __init__(self, step: Step, mode: str | None = None, backend: str | Callable[..., Any] = "inductor",
                 shapes: str | None = None):
        self.cache_dir = enable_caches()
        self.mode = mode or compile_mode()
        self.shapes = shapes or compile_shapes()
        self.eager = step
        opts: dict[str, Any] = {"mode": self.mode} if backend == "inductor" else {}
        dynamic = False if self.shapes == "static" else None
        self.fn = torch.compile(step, backend=backend, dynamic=dynamic, **opts)
        self.error: str | None = None  # why compiling failed; the eager step runs from then on
        self.seconds: dict[str, float] = {}  # first call per shape key (where compiling happens), seconds
        self._seen: set[tuple[Any, ...]] = set()

    @property
    def active(self) -> bool:
        return self.error is None

    def __call__(self, inputs: torch.Tensor, span: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        if self.error is not None:
            return self.eager(inputs, span, rows)
        key = (inputs.shape[1], span, rows is not None)
        first = key not in self._seen
        if first and self.shapes == "dynamic" and inputs.shape[1] > 1:
            # Dynamic in the step's size from the first multi-row bucket on, whichever comes first: left to
            # dynamo, a first step of 64 (a prompt) compiles a static graph that no other bucket can reuse.
            torch._dynamo.mark_dynamic(inputs, 1)
            if rows is not None:
                torch._dynamo.mark_dynamic(rows, 0)
        t0 = time.perf_counter()
        try:
            out = self.fn(inputs, span, rows)
        except Exception as err:  # an architecture or backend inductor cannot compile: keep decoding, eagerly
            if not first:  # compiled code that ran before and fails now (e.g. while captured): the caller decides
                raise
            self.error = f"{type(err).__name__}: {err}"
            warnings.warn(f"compiling the decode step failed ({self.error[:500]}); the fast engine goes on with "
                          "the eager step", RuntimeWarning, stacklevel=3)
            return self.eager(inputs, span, rows)
        if first:
            if inputs.is_cuda:
                torch.cuda.synchronize()
            self._seen.add(key)
            self.seconds[f"{key[0]}x{key[1]}{'+rows' if key[2] else ''}"] = round(time.perf_counter() - t0, 3)
        return out
