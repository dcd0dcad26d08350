"""Fixtures shared by several test modules."""

import pytest
import torch


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
