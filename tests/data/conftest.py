"""Tokenizers for the data tests: the bundled demo one and two built here, offline, in < 1 s."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hydrahead_lit.data.demo import demo_documents, demo_tokenizer
from hydrahead_lit.data.templates import template_texts


def _train(pre_tokenizer, decoder, vocab_size: int, alphabet: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>", "<unk>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator([*demo_documents(300, seed=7), *template_texts()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="session")
def demo_tok():
    return demo_tokenizer()


@pytest.fixture(scope="session")
def gpt2_like_tok():
    """Byte-level BPE that merges digits into multi-digit tokens (GPT-2 style numbers)."""
    return _train(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
        1500,
        pre_tokenizers.ByteLevel.alphabet(),
    )


@pytest.fixture(scope="session")
def sentencepiece_like_tok():
    """Metaspace BPE that prepends a word marker to every encoded text (Llama/Mistral style)."""
    return _train(
        pre_tokenizers.Metaspace(prepend_scheme="always"),
        decoders.Metaspace(prepend_scheme="always"),
        800,
        list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,:?-\"'"),
    )


@pytest.fixture(params=["demo", "gpt2_like", "sentencepiece_like"])
def any_tok(request):
    return request.getfixturevalue(f"{request.param}_tok")
