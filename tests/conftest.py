"""Fixtures shared by several test modules."""

import pytest
import torch
from hypothesis import HealthCheck, settings

# Timing checks say nothing about correctness, and on a shared 2-core machine one stalled draw (1.08 s, seen in
# CI) fails them: every property test runs without a deadline or the too-slow check.
settings.register_profile("aspd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("aspd")


@pytest.fixture(scope="module")
def one_thread():
    """A 2-layer model gains nothing from threads, and on a busy machine OpenMP spinning makes it crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved as a Hugging Face folder (no control tokens)."""
    from aspd.testing import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_model("llama", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
