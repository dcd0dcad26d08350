"""A byte-level BPE tokenizer trained in memory and random small Llama / Qwen2 / Gemma 3 models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Here are three tips for staying healthy:",
    "1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep well. In summary, habits matter.",
    "Gross pay is hours times rate. Fuel cost is distance divided by efficiency times price.",
    "Python, Rust and Go are programming languages. Each has strengths: speed, safety, simplicity.",
    "Paris is the capital of France; Berlin of Germany; Rome of Italy. Title: Body text, answer.",
] * 4

ARCHS = ("llama", "qwen2", "gemma3")


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """A fresh ChatML tokenizer (about 400 tokens); callers may add tokens to it freely."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    tok.chat_template = CHATML
    return tok


def tiny_model(arch: str, vocab_size: int, *, seed: int = 0, attn: str = "sdpa", tie: bool = False) -> Any:
    """A random 2-layer model of the given architecture in fp32, eval mode."""
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tie,
    )
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg, cls = LlamaConfig(num_hidden_layers=2, **common), LlamaForCausalLM
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg, cls = Qwen2Config(num_hidden_layers=2, **common), Qwen2ForCausalLM
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        # A tiny window so that sliding-window layers really cut context in short tests.
        cfg = Gemma3TextConfig(
            num_hidden_layers=3, head_dim=16, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"], **common,
        )
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHS}")
    cfg._attn_implementation = attn
    model = cls(cfg)
    # Random init keeps logits near uniform; a larger scale makes greedy paths depend on context.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()
