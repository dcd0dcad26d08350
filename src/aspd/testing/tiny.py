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


def grouping_model(arch: str = "llama") -> tuple[Any, Any]:
    """A tiny model (and tokenizer with the control tokens) that opens parallel groups by itself when sampled.

    A bigram model: attention and MLP outputs are zeroed, so the next-token logits depend on the current token
    only, through one embedding per state (text, after `<|title|>`, after `<|/title|>`). After text it often
    announces a title; a title is a word or two; after `<|/title|>` comes another title or `<|para|>`. With five
    words to pick titles from, sampling (temperature 1) opens a group within a few dozen tokens for most seeds.
    """
    from aspd.sample import end_of_turn_ids
    from aspd.tokens import add_control_tokens, text_ids

    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    c = add_control_tokens(tok, model)
    words = [text_ids(tok, w)[0] for w in (" Diet", " Sleep", " Work", " Eat", " well", ".")]
    text, after_title, after_title_end = 0, 1, 2
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        root = emb.shape[1] ** 0.5  # a one-hot row times root has unit RMS: the final norm leaves it as is
        emb.zero_()
        emb[:, text] = root
        for t, state in ((c.title, after_title), (c.title_end, after_title_end)):
            emb[t, text] = 0.0
            emb[t, state] = root
        logits = {text: {**dict.fromkeys(words, 1.0), c.title: 1.5, c.title_end: 2.0, c.branch_end: 0.5,
                         **dict.fromkeys(end_of_turn_ids(tok), -1.0)},
                  after_title: dict.fromkeys(words, 1.0),
                  after_title_end: {c.title: 2.0, c.para: 2.0}}
        head.fill_(-20.0 / root)
        for state, row in logits.items():
            for t, v in row.items():
                head[t, state] = v / root
    return model, tok
