from __future__ import annotations

import json
import re

from transformers import AutoTokenizer

from hydrahead_lit.data.demo import DEMO_TOKENIZER_DIR, build_demo_tokenizer, demo_documents, write_demo_corpus


def test_documents_are_deterministic_and_sentence_shaped():
    a, b = list(demo_documents(20, seed=3)), list(demo_documents(20, seed=3))
    assert a == b and a != list(demo_documents(20, seed=4))
    for doc in a:
        for paragraph in doc.split("\n\n"):
            assert paragraph.lstrip('"')[0].isupper() and paragraph.rstrip()[-1] in '.?"'
    # "was/were" agrees with plural subjects such as "mice" or "many dogs" ("sheep" may be either).
    text = " ".join(demo_documents(300, seed=0))
    assert not re.search(r"\b(mice|children|wolves|many \w+s) was\b", text)


def test_write_demo_corpus(tmp_path):
    paths = write_demo_corpus(tmp_path, n_docs=7, seed=1, docs_per_file=3)
    assert [p.name for p in paths] == ["demo-1-00000.jsonl", "demo-1-00001.jsonl", "demo-1-00002.jsonl"]
    docs = [json.loads(line)["text"] for p in paths for line in p.read_text().splitlines()]
    assert docs == list(demo_documents(7, seed=1))


def test_demo_tokenizer_properties(demo_tok):
    assert len(demo_tok) <= 2048
    assert demo_tok.convert_ids_to_tokens([demo_tok.eos_token_id, demo_tok.pad_token_id]) == [
        "<|endoftext|>",
        "<|pad|>",
    ]
    # Digits are single tokens, so numbers are copied digit by digit.
    ids = demo_tok(" 90817263", add_special_tokens=False)["input_ids"]
    assert len(ids) == 9 and demo_tok.decode(ids) == " 90817263"
    for doc in demo_documents(20, seed=9):  # byte-level: exact round trip
        assert demo_tok.decode(demo_tok(doc)["input_ids"]) == doc
    # Lexicon words are mostly single tokens: ~1.3 tokens per word on demo text.
    doc = " ".join(demo_documents(50, seed=5))
    assert len(demo_tok(doc)["input_ids"]) < 1.6 * len(doc.split())
    loaded = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR), local_files_only=True)
    assert loaded.get_vocab() == demo_tok.get_vocab()


def test_committed_tokenizer_is_reproducible(tmp_path):
    build_demo_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (DEMO_TOKENIZER_DIR / "tokenizer.json").read_text()
