"""Filler text ("haystack") for synthetic retrieval samples, as token ids of any tokenizer.

A :class:`Haystack` hands out exactly ``n`` filler tokens together with the positions where
a sentence starts, so needles can be inserted between sentences. Sources:

* ``procedural`` (default): sentences of the bundled demo grammar (no third-party text);
* ``noise``: RULER's repeated filler sentences;
* ``texts``: any strings (split into sentences), read consecutively from a random start;
* ``corpus``: the token stream of a prepared corpus directory (must use the same tokenizer);
* ``tokens``: a given token stream (e.g. the corpus row a synthetic sample replaces).
"""

from __future__ import annotations

import bisect
import random
import re
from pathlib import Path

# RULER's "noise" haystack (scripts/data/synthetic/niah.py): one repeated paragraph.
NOISE_SENTENCES: tuple[str, ...] = (
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.",
)  # fmt: skip

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (BOS/EOS are never added to pieces)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class Haystack:
    """A source of filler tokens; build with :meth:`procedural`, :meth:`noise`, :meth:`from_texts`
    or :meth:`from_corpus`."""

    def __init__(
        self,
        kind: str = "procedural",
        texts: list[str] | None = None,
        corpus_dir: str | Path | None = None,
        pool_size: int = 4096,
        seed: int = 0,
        token_ids: list[int] | None = None,
    ) -> None:
        if kind not in ("procedural", "noise", "texts", "corpus", "tokens"):
            raise ValueError(f"unknown haystack kind {kind!r}; use procedural, noise, texts, corpus or tokens")
        if kind == "tokens" and not token_ids:
            raise ValueError("a 'tokens' haystack needs a non-empty list of token ids")
        if kind == "texts" and not texts:
            raise ValueError("a 'texts' haystack needs a non-empty list of texts")
        if kind == "corpus" and corpus_dir is None:
            raise ValueError("a 'corpus' haystack needs corpus_dir (a prepared directory)")
        self.kind = kind
        self.pool_size = pool_size
        self.seed = seed
        self.corpus_dir = None if corpus_dir is None else str(corpus_dir)
        self.token_ids = None if token_ids is None else [int(t) for t in token_ids]
        self._sentences: list[str] | None = None
        if kind == "texts":
            self._sentences = [s for t in texts for s in _SENTENCE_SPLIT.split(t.strip()) if s]
        # Per-tokenizer caches: tokenized sentence pool, or corpus reader + sentence-end ids.
        self._pools: dict = {}
        self._corpus: dict[int, tuple[object, object, frozenset[int]]] = {}

    @classmethod
    def procedural(cls, seed: int = 0, pool_size: int = 4096) -> Haystack:
        return cls("procedural", pool_size=pool_size, seed=seed)

    @classmethod
    def noise(cls) -> Haystack:
        return cls("noise")

    @classmethod
    def from_texts(cls, texts: list[str]) -> Haystack:
        return cls("texts", texts=list(texts))

    @classmethod
    def from_corpus(cls, corpus_dir: str | Path) -> Haystack:
        return cls("corpus", corpus_dir=corpus_dir)

    @classmethod
    def from_token_ids(cls, token_ids: list[int]) -> Haystack:
        return cls("tokens", token_ids=token_ids)

    def __getstate__(self) -> dict:
        # Caches hold tokenizers and litdata readers: rebuild them lazily in worker processes.
        state = dict(self.__dict__)
        state["_pools"], state["_corpus"] = {}, {}
        return state

    # ------------------------------------------------------------------ text sources
    def _pool(self, tokenizer) -> list[list[int]]:
        cached = self._pools.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
        if self.kind == "procedural":
            from hydrahead_lit.data.grammar import demo_sentences

            sentences = demo_sentences(self.pool_size, self.seed)
        elif self.kind == "noise":
            sentences = list(NOISE_SENTENCES)
        else:
            sentences = self._sentences or []
        # A leading space keeps word boundaries when pieces are concatenated as token ids.
        batch = tokenizer([" " + s for s in sentences], add_special_tokens=False)["input_ids"]
        pool = [list(ids) for ids in batch if len(ids) > 0]
        if not pool:
            raise ValueError("the haystack texts tokenize to nothing")
        self._pools[id(tokenizer)] = (tokenizer, pool)
        return pool

    def _text_fill(self, tokenizer, n: int, rng: random.Random) -> tuple[list[int], list[int]]:
        pool = self._pool(tokenizer)
        if self.kind == "procedural":
            chosen = _exact_fit(pool, n, rng)
        else:  # noise and texts read in order, like RULER's repeated noise and essays
            chosen, idx, total = [], rng.randrange(len(pool)), 0
            while total < n:
                chosen.append(pool[idx % len(pool)])
                total += len(chosen[-1])
                idx += 1
        ids: list[int] = []
        starts: list[int] = []
        for sentence in chosen:
            starts.append(len(ids))
            ids.extend(sentence)
        return ids[:n], starts

    # ------------------------------------------------------------------ corpus source
    def _corpus_reader(self, tokenizer) -> tuple[object, frozenset[int]]:
        cached = self._corpus.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1], cached[2]
        from litdata import StreamingDataset, TokensLoader

        from hydrahead_lit.data.manifest import Manifest, validate

        validate(Manifest.load(self.corpus_dir), tokenizer, self.corpus_dir)
        ds = StreamingDataset(self.corpus_dir, item_loader=TokensLoader(block_size=_CORPUS_BLOCK), shuffle=False)
        ends = sentence_end_ids(tokenizer)
        self._corpus[id(tokenizer)] = (tokenizer, ds, ends)
        return ds, ends

    def _corpus_fill(self, tokenizer, n: int, rng: random.Random) -> tuple[list[int], list[int]]:
        ds, ends = self._corpus_reader(tokenizer)
        n_blocks = len(ds)
        if n_blocks == 0:
            raise ValueError(f"prepared corpus {self.corpus_dir} holds no token blocks")
        ids: list[int] = []
        block = rng.randrange(n_blocks)
        while len(ids) < n:
            ids.extend(int(t) for t in ds[block % n_blocks])
            block += 1
        return ids[:n], _starts(ids[:n], ends, tokenizer.eos_token_id)

    def _token_fill(self, tokenizer, n: int) -> tuple[list[int], list[int]]:
        reps = -(-n // len(self.token_ids))
        ids = (self.token_ids * reps)[:n]
        return ids, _starts(ids, sentence_end_ids(tokenizer), tokenizer.eos_token_id)

    # ------------------------------------------------------------------ public
    def fill(self, tokenizer, n: int, rng: random.Random) -> tuple[list[int], list[int]]:
        """Exactly ``n`` filler token ids and the sorted positions where a sentence starts (0 first)."""
        if n <= 0:
            return [], [0]
        if self.kind == "corpus":
            return self._corpus_fill(tokenizer, n, rng)
        if self.kind == "tokens":
            return self._token_fill(tokenizer, n)
        return self._text_fill(tokenizer, n, rng)


_CORPUS_BLOCK = 1024


def _exact_fit(pool: list[list[int]], n: int, rng: random.Random) -> list[list[int]]:
    """Random sentences totalling ``n`` tokens when possible, so filler ends on a sentence end.

    Draws at random until the remainder could be one sentence, then takes a sentence of exactly
    that length; if none exists, the last draw is undone and retried. Falls back to letting the
    caller truncate the last sentence (remainders shorter than any sentence, tiny pools).
    """
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(pool):
        by_len.setdefault(len(s), []).append(i)
    longest = max(by_len)
    chosen: list[list[int]] = []
    left = n
    while left > longest:
        chosen.append(pool[rng.randrange(len(pool))])
        left -= len(chosen[-1])
    for _ in range(256):
        if left in by_len:
            chosen.append(pool[rng.choice(by_len[left])])
            return chosen
        if chosen and rng.random() < 0.5:  # undo a draw so that the remainder changes
            left += len(chosen.pop())
            continue
        s = pool[rng.randrange(len(pool))]
        if len(s) < left:
            chosen.append(s)
            left -= len(s)
    while left > 0:  # give up on exactness: the caller truncates the last sentence
        chosen.append(pool[rng.randrange(len(pool))])
        left -= len(chosen[-1])
    return chosen


def _starts(ids: list[int], ends: frozenset[int], eos: int | None) -> list[int]:
    """Sentence starts in a token stream: 0 and every position after a sentence end or EOS."""
    return [0] + [i + 1 for i, t in enumerate(ids[:-1]) if t in ends or t == eos]


_END_IDS: dict[int, tuple[object, frozenset[int]]] = {}


def sentence_end_ids(tokenizer) -> frozenset[int]:
    """Ids of vocabulary entries that end a sentence (., !, ? possibly followed by spaces/newlines).

    Cached per tokenizer object: scanning a 150k-entry vocabulary takes tens of milliseconds.
    """
    cached = _END_IDS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    ends = set()
    for token, idx in tokenizer.get_vocab().items():
        # Strip byte-level (Ġ, Ċ) and sentencepiece (▁) whitespace markers.
        core = token.rstrip("ĠĊ▁ \n")
        if core and core[-1] in ".!?":
            ends.add(idx)
    _END_IDS[id(tokenizer)] = (tokenizer, frozenset(ends))
    return _END_IDS[id(tokenizer)][1]


def snap(boundaries: list[int], target: float) -> int:
    """The boundary nearest to ``target`` (``boundaries`` sorted, non-empty)."""
    i = bisect.bisect_left(boundaries, target)
    if i == 0:
        return boundaries[0]
    if i == len(boundaries):
        return boundaries[-1]
    before, after = boundaries[i - 1], boundaries[i]
    return before if target - before <= after - target else after
