"""Offline tokenizers: a byte-level BPE trained on the shards' own text (no hub access needed),
or any fast tokenizer from a local directory."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4000):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(trim_offsets=True)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>", "<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<|endoftext|>")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    if not tok.is_fast:
        from pipelines.errors import ConfigError

        raise ConfigError(f"{path}: a fast tokenizer is required (character offsets map spans to tokens)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok
