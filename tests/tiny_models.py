"""Tiny random causal LMs with a real (locally trained) tokenizer: no downloads, fast."""

from __future__ import annotations

from functools import lru_cache

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Question: What is two plus three? Answer: five.",
    "The capital of France is Paris. The answer is (c) wooded area.",
    "Premise: A man plays a guitar. Hypothesis: A person makes music. entailment neutral",
    "Maria Keller, 42, from Graz paid 1,250 EUR rent and 310 EUR for utilities.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / ( ) = . , ? ! : ;",
] * 20


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def make_tokenizer(vocab_size: int = 400, chat: bool = True):
    """A byte-level BPE tokenizer trained on a tiny corpus (deterministic)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat:
        tok.chat_template = CHATML
    return tok


def tiny_llama(tok, seed: int = 0, max_positions: int = 512):
    """A 2-layer Llama with random weights sized to ``tok``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=getattr(tok, "bos_token_id", None),
    )
    return LlamaForCausalLM(cfg).eval()


def make_tiny_lm(seed: int = 0, vocab_size: int = 400, chat: bool = True):
    """(model, tokenizer): a 2-layer Llama with random weights."""
    tok = make_tokenizer(vocab_size, chat)
    return tiny_llama(tok, seed), tok


def hash_embedder(dim: int, scale: float = 1.0):
    """embed_fn for hand-made spaces: a fixed pseudo-random vector per word (deterministic)."""
    import hashlib

    import numpy as np

    def embed(word: str):
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return (np.random.default_rng(seed).normal(size=dim) * scale).astype(np.float32)

    return embed
