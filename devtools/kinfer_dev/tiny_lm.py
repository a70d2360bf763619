"""A tiny generative model for tests, benchmarks and the demo: a GPT-2-style causal LM with
random weights and a byte-level BPE tokenizer trained on a few sentences, saved with
save_pretrained beside its signature.json. Nothing is downloaded; torch and transformers are
imported only when one is made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LM_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a model server streams tokens to its clients one by one",
    "kubernetes schedules pods onto nodes with gpus",
    "hello world, hello kinfer, hello streaming answers",
]


def make_tiny_lm(directory: Path, context_length: int = 64, max_new_tokens: int = 32, **config: Any) -> Path:
    """A GPT-2-style causal LM with random weights and a byte-level BPE tokenizer trained
    here on a few sentences (saved with save_pretrained; nothing downloaded)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(LM_CORPUS, trainer)
    fast = transformers.PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    eos = fast.eos_token_id
    settings = {"n_embd": 32, "n_layer": 2, "n_head": 2, "initializer_range": 0.2, **config}
    cfg = transformers.GPT2Config(
        vocab_size=len(fast), n_positions=context_length, bos_token_id=eos, eos_token_id=eos, **settings
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()  # type: ignore[no-untyped-call]
    model.generation_config.pad_token_id = eos
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    signature = {"kind": "generative", "context_length": context_length, "max_new_tokens": max_new_tokens}
    (directory / "signature.json").write_text(json.dumps(signature, indent=2))
    return directory
