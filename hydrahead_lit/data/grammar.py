"""The procedural grammar of the bundled demo: English-like sentences over :mod:`hydrahead_lit.data.lexicon`.

Each document keeps a few recurring characters and objects so that a tiny teacher has something to
copy (the mechanism that long-context retrieval heads rely on). The demo corpus
(:mod:`hydrahead_lit.data.demo`) and the default synthetic filler (:mod:`hydrahead_lit.data.haystack`)
both draw from it; it imports nothing but the lexicon.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from hydrahead_lit.data import lexicon as lx

_PLURALS = frozenset(lx.plural(n) for n in lx.NOUNS if lx.plural(n) != n)


class Grammar:
    """Sentence generator for one document: a cast of characters and objects reused throughout."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cast = rng.sample(lx.NAMES, 3)
        self.things = rng.sample(lx.NOUNS, 4)

    def _name(self) -> str:
        return self.rng.choice(self.cast) if self.rng.random() < 0.8 else self.rng.choice(lx.NAMES)

    def _noun(self, animate: bool = False) -> str:
        pool = sorted(lx.ANIMATE) if animate else lx.NOUNS
        if not animate and self.rng.random() < 0.5:
            return self.rng.choice(self.things)
        return self.rng.choice(pool)

    def noun_phrase(self, animate: bool = False, allow_name: bool = True) -> str:
        r = self.rng
        if allow_name and animate and r.random() < 0.45:
            return self._name()
        noun = self._noun(animate)
        if r.random() < 0.25:
            det = r.choice(("the", "some", "two", "three", "many"))
            noun = lx.plural(noun)
        else:
            det = r.choice(("the", "the", "a", "this", "that", "every"))
            if det == "a" and noun[0] in "aeiou":
                det = "an"
        if r.random() < 0.5:
            adj = r.choice(lx.ADJECTIVES)
            if det == "an" and adj[0] not in "aeiou":
                det = "a"
            elif det == "a" and adj[0] in "aeiou":
                det = "an"
            noun = f"{adj} {noun}"
        elif det == "an" and noun[0] not in "aeiou":
            det = "a"
        return f"{det} {noun}"

    def _place(self) -> str:
        return f"{self.rng.choice(lx.PREPOSITIONS)} {self.noun_phrase(allow_name=False)}"

    def clause(self) -> str:
        r = self.rng
        subj = self.noun_phrase(animate=True)
        kind = r.random()
        if kind < 0.45:
            out = f"{subj} {r.choice(lx.TRANSITIVE)[1]} {self.noun_phrase()}"
        elif kind < 0.8:
            out = f"{subj} {r.choice(lx.INTRANSITIVE)[1]}"
            if r.random() < 0.4:
                out += f" {r.choice(lx.ADVERBS)}"
        else:
            plural = subj.split()[-1] in _PLURALS
            out = f"{subj} {'were' if plural else 'was'} {r.choice(lx.ADJECTIVES)}"
        if r.random() < 0.35:
            out += f" {self._place()}"
        return out

    def sentence(self) -> str:
        r = self.rng
        kind = r.random()
        if kind < 0.12:
            text = f"{r.choice(lx.TIMES)}, {self.clause()}"
        elif kind < 0.27:
            text = f"{self.clause()} {r.choice(lx.CONNECTIVES)} {self.clause()}"
        elif kind < 0.35:
            count = r.choice((r.randint(2, 12), r.randint(13, 999), r.randint(1000, 99999)))
            noun = lx.plural(r.choice(lx.NOUNS))
            text = f"{self._name()} had {count} {noun} {self._place()}"
        elif kind < 0.42:
            name = self._name()
            spoken = self.clause()
            return f'"{spoken[0].upper()}{spoken[1:]}," {name} {r.choice(lx.SPEECH)}.'
        elif kind < 0.47:
            verb = r.choice(lx.TRANSITIVE)
            obj = self.noun_phrase(allow_name=False)
            return f"Who {verb[1]} {obj}? {self._name()} did."
        else:
            text = self.clause()
        return f"{text[0].upper()}{text[1:]}."


def demo_sentences(n: int, seed: int) -> list[str]:
    """``n`` standalone sentences (deterministic in ``seed``), used as synthetic filler."""
    rng = random.Random(f"demo-sentences-{seed}")
    out: list[str] = []
    while len(out) < n:
        grammar = Grammar(rng)
        out.extend(grammar.sentence() for _ in range(min(8, n - len(out))))
    return out


def demo_documents(n: int, seed: int) -> Iterator[str]:
    """Yield ``n`` procedural documents: 1-4 paragraphs of 3-8 sentences, deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"demo-docs-{seed}")
    for _ in range(n):
        grammar = Grammar(rng)
        paragraphs = [" ".join(grammar.sentence() for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(1, 4))]
        yield "\n\n".join(paragraphs)
