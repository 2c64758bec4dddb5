"""Synthetic long-context retrieval samples, built to an exact length in tokens for any tokenizer.

Tasks follow RULER (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your
Long-Context Language Models?") where possible: niah templates and answer prefixes, 7-digit
values, word keys, variable tracking with 5-letter names and one 4-hop chain. ``passkey`` is the
LongLoRA/landmark-attention passkey test (5 digits). ``mqar`` is a text form of multi-query
associative recall (Arora et al. 2023, Zoology): a dense list of key-value pairs, then several
keys to look up.

Samples are assembled from separately tokenized pieces, so every recorded position is exact
and each answer token is the very token id that appears in the needle it is copied from.
"""

from __future__ import annotations

import functools
import inspect
import random
from dataclasses import dataclass, field

from hydrahead_lit.data.haystack import Haystack, encode, snap
from hydrahead_lit.data.lexicon import ADJECTIVES, NOUNS
from hydrahead_lit.data.templates import MQAR_HEADER, NIAH_HEADER, PASSKEY_HEADER, VT_HEADER

TASKS: tuple[str, ...] = (
    "passkey",
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "mqar",
    "variable_tracking",
)


@dataclass
class RetrievalSample:
    """One synthetic sample; ``full_ids`` has exactly the requested length."""

    task: str
    input_ids: list[int]
    answer_ids: list[int]
    answers: list[str]
    needle_spans: list[tuple[int, int]]
    answer_source_positions: list[int]
    seed: int
    metadata: dict = field(default_factory=dict)

    @property
    def full_ids(self) -> list[int]:
        return self.input_ids + self.answer_ids

    @property
    def answer_span(self) -> tuple[int, int]:
        """[start, end) of the answer tokens inside ``full_ids``."""
        return len(self.input_ids), len(self.input_ids) + len(self.answer_ids)


@dataclass
class _Needle:
    """A needle as token pieces; ``slots`` maps a name (e.g. a value) to its offset in the needle."""

    ids: list[int] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)

    def add(self, ids: list[int], slot: str | None = None) -> _Needle:
        if slot is not None and slot not in self.slots:  # first occurrence is the copy source
            self.slots[slot] = len(self.ids)
        self.ids.extend(ids)
        return self


class _Builder:
    """Collects the pieces of one sample and lays them out to an exact length."""

    def __init__(self, task: str, tokenizer, rng: random.Random) -> None:
        self.task, self.tok, self.rng = task, tokenizer, rng
        self._pieces: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._pieces:
            self._pieces[text] = list(_encode_cached(self.tok, text))
        return self._pieces[text]

    def prefetch(self, texts: list[str]) -> None:
        """Tokenize many pieces in one batch call (per-call overhead dominates for short pieces)."""
        todo = sorted({t for t in texts if t not in self._pieces})
        if todo:
            batch = self.tok(todo, add_special_tokens=False)["input_ids"]
            self._pieces.update((t, list(ids)) for t, ids in zip(todo, batch))

    def number(self, digits: int, taken: set[str]) -> str:
        if digits < 1 or len(taken) >= 9 * 10 ** (digits - 1):
            raise ValueError(f"task {self.task!r}: cannot draw another distinct {digits}-digit number")
        while True:
            value = str(self.rng.randint(10 ** (digits - 1), 10**digits - 1))
            if value not in taken:
                taken.add(value)
                return value

    def word_key(self, taken: set[str]) -> str:
        if len(taken) >= len(ADJECTIVES) * len(NOUNS):
            raise ValueError(f"task {self.task!r}: at most {len(ADJECTIVES) * len(NOUNS)} distinct keys")
        while True:  # RULER keys are adjective-noun words such as "quiet-river"
            key = f"{self.rng.choice(ADJECTIVES)}-{self.rng.choice(NOUNS)}"
            if key not in taken:
                taken.add(key)
                return key

    def assemble(
        self,
        length: int,
        haystack: Haystack,
        header: str,
        needles: list[_Needle],
        question: str,
        answer: list[tuple[list[int], tuple[int, str] | None]],
        answers: list[str],
        seed: int,
        depths: list[float] | None = None,
        metadata: dict | None = None,
    ) -> RetrievalSample:
        """Interleave needles with filler; ``answer`` pieces name their source as (needle, slot)."""
        head, tail = self.ids(header), self.ids(question)
        answer_ids = [t for ids, _ in answer for t in ids]
        fixed = len(head) + sum(len(n.ids) for n in needles) + len(tail) + len(answer_ids)
        n_fill = length - fixed
        if n_fill < 0:
            raise ValueError(
                f"length {length} is too short for task {self.task!r} with this tokenizer: "
                f"the needles, question and answer alone take {fixed} tokens"
            )
        filler, starts = haystack.fill(self.tok, n_fill, self.rng)
        boundaries = sorted(set(starts) | {n_fill})
        if depths is None:
            depths = sorted(self.rng.random() for _ in needles)
        cuts, last = [], 0
        for d in depths:
            last = max(last, snap(boundaries, d * n_fill))  # keep the given needle order
            cuts.append(last)
        input_ids, spans, prev = list(head), [], 0
        for needle, cut in zip(needles, cuts):
            input_ids.extend(filler[prev:cut])
            spans.append((len(input_ids), len(input_ids) + len(needle.ids)))
            input_ids.extend(needle.ids)
            prev = cut
        input_ids.extend(filler[prev:])
        input_ids.extend(tail)
        sources: list[int] = []
        for ids, src in answer:
            if src is None:
                sources.extend([-1] * len(ids))
            else:
                start = spans[src[0]][0] + needles[src[0]].slots[src[1]]
                sources.extend(range(start, start + len(ids)))
        meta = {"depths": list(depths), "filler_tokens": n_fill, **(metadata or {})}
        return RetrievalSample(self.task, input_ids, answer_ids, answers, spans, sources, seed, meta)


@functools.lru_cache(maxsize=1 << 16)
def _encode_cached(tokenizer, text: str) -> tuple[int, ...]:
    # Templates recur in every sample; random keys and values just cycle through the cache.
    return tuple(encode(tokenizer, text))


def _join_answer(b: _Builder, values: list[str], where: list[tuple[int, str]], sep: str = ",") -> list:
    """Answer pieces ' v1, v2, ...' with each value sourced from its needle slot."""
    pieces: list = []
    for i, (value, src) in enumerate(zip(values, where)):
        if i:
            pieces.append((b.ids(sep), None))
        pieces.append((b.ids(" " + value), src))
    return pieces


def _niah_needle(b: _Builder, key: str, value: str) -> _Needle:
    return (
        _Needle().add(b.ids(" One of the special magic numbers for")).add(b.ids(" " + key), "key")
        .add(b.ids(" is:")).add(b.ids(" " + value), "value").add(b.ids("."))
    )  # fmt: skip


def _listing(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def _niah(
    b: _Builder,
    length: int,
    haystack: Haystack,
    seed: int,
    num_keys: int = 1,
    num_values: int = 1,
    num_queries: int = 1,
    value_digits: int = 7,
    depth: float | None = None,
) -> RetrievalSample:
    if min(num_keys, num_values, num_queries) < 1 or num_queries > num_keys:
        raise ValueError("need num_keys, num_values, num_queries >= 1 and num_queries <= num_keys")
    keys_taken: set[str] = set()
    values_taken: set[str] = set()
    keys = [b.word_key(keys_taken) for _ in range(num_keys)]
    pairs = [(k, b.number(value_digits, values_taken)) for k in keys for _ in range(num_values)]
    order = list(range(len(pairs)))
    b.rng.shuffle(order)
    needles = [_niah_needle(b, *pairs[i]) for i in order]
    queries = keys[:num_queries]  # the first keys are queried, the rest are distractors
    values, where = [], []
    for q in queries:
        for j, i in enumerate(order):
            if pairs[i][0] == q:
                values.append(pairs[i][1])
                where.append((j, "value"))
    about = _listing(queries)
    question = f"\nWhat are all the special magic numbers for {about} mentioned in the provided text?"
    prefix = f" The special magic numbers for {about} mentioned in the provided text are"
    depths = None if depth is None else [depth] * len(needles)
    return b.assemble(
        length,
        haystack,
        NIAH_HEADER,
        needles,
        question + prefix,
        _join_answer(b, values, where),
        values,
        seed,
        depths,
        {"keys": queries},
    )


def _passkey(
    b: _Builder, length: int, haystack: Haystack, seed: int, digits: int = 5, depth: float | None = None
) -> RetrievalSample:
    key = b.number(digits, set())
    needle = (
        _Needle().add(b.ids(" The pass key is")).add(b.ids(" " + key), "value")
        .add(b.ids(". Remember it.")).add(b.ids(" " + key)).add(b.ids(" is the pass key."))
    )  # fmt: skip
    question = "\nWhat is the pass key? The pass key is"
    answer = [(b.ids(" " + key), (0, "value"))]
    depths = None if depth is None else [depth]
    return b.assemble(length, haystack, PASSKEY_HEADER, [needle], question, answer, [key], seed, depths)


def _mqar(
    b: _Builder,
    length: int,
    haystack: Haystack,
    seed: int,
    num_pairs: int | None = None,
    num_queries: int = 4,
    value_digits: int = 4,
    max_pairs: int = 256,
) -> RetrievalSample:
    """``num_pairs`` pairs, or (None) as many as fit up to ``max_pairs``; the rest is filler."""
    keys_taken: set[str] = set()
    values_taken: set[str] = set()
    needles: list[_Needle] = []
    pairs: list[tuple[str, str]] = []
    used, budget = 0, length - len(b.ids(MQAR_HEADER))
    target = max_pairs if num_pairs is None else num_pairs
    candidates = [(b.word_key(keys_taken), b.number(value_digits, values_taken)) for _ in range(target)]
    b.prefetch([" " + x for pair in candidates for x in pair])
    for key, value in candidates:
        needle = _Needle().add(b.ids(" " + key), "key").add(b.ids(":")).add(b.ids(" " + value), "value")
        needle.add(b.ids("."))
        if num_pairs is None and used + len(needle.ids) > budget and len(pairs) >= num_queries:
            break
        used += len(needle.ids)
        needles.append(needle)
        pairs.append((key, value))
    if num_queries > len(pairs):
        raise ValueError(f"mqar needs num_queries ({num_queries}) <= number of pairs ({len(pairs)})")
    queried = b.rng.sample(range(len(pairs)), num_queries)

    def tail() -> tuple[str, list]:
        about = _listing([pairs[i][0] for i in queried])
        answer = _join_answer(b, [pairs[i][1] for i in queried], [(i, "value") for i in queried])
        return f"\nWhat are the numbers for {about}? The numbers are", answer

    question, answer = tail()
    if num_pairs is None:  # drop unqueried pairs from the end until question and answer fit too
        extra = len(b.ids(question)) + sum(len(ids) for ids, _ in answer)
        while used + extra > budget and len(pairs) > num_queries:
            last = next(i for i in reversed(range(len(pairs))) if i not in queried)
            used -= len(needles[last].ids)
            del needles[last], pairs[last]
            queried = [i - (i > last) for i in queried]
            question, answer = tail()
    values = [pairs[i][1] for i in queried]
    depth = b.rng.random()  # pairs form one dense block, placed at a random depth in the filler
    return b.assemble(
        length,
        haystack,
        MQAR_HEADER,
        needles,
        question,
        answer,
        values,
        seed,
        [depth] * len(needles),
        {"num_pairs": len(pairs)},
    )


def _variable_name(b: _Builder, taken: set[str]) -> str:
    while True:
        name = "".join(b.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in taken:
            taken.add(name)
            return name


def _variable_tracking(
    b: _Builder,
    length: int,
    haystack: Haystack,
    seed: int,
    num_chains: int = 1,
    num_hops: int = 4,
    value_digits: int = 5,
) -> RetrievalSample:
    if num_chains < 1 or num_hops < 1:
        raise ValueError("variable_tracking needs num_chains >= 1 and num_hops >= 1")
    names: set[str] = set()
    values: set[str] = set()
    chains = []  # chain c: (value, [var_0 .. var_hops]) with var_0 = value, var_i = var_{i-1}
    for _ in range(num_chains):
        chains.append((b.number(value_digits, values), [_variable_name(b, names) for _ in range(num_hops + 1)]))
    statements: list[tuple[int, int, _Needle]] = []
    for c, (value, chain) in enumerate(chains):
        for hop, var in enumerate(chain):
            rhs = b.ids(" " + value) if hop == 0 else b.ids(" VAR") + b.ids(" " + chain[hop - 1])
            needle = _Needle().add(b.ids(" VAR")).add(b.ids(" " + var), "var").add(b.ids(" =")).add(rhs).add(b.ids("."))
            statements.append((hop, c, needle))
    statements.sort(key=lambda s: (s[0], s[1]))  # hops in order, chains interleaved (as in RULER)
    needles = [s[2] for s in statements]
    value, chain = chains[0]
    where = [
        (next(i for i, s in enumerate(statements) if s[1] == 0 and s[0] == hop), "var") for hop in range(num_hops + 1)
    ]
    question = f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
    prefix = (
        f" Answer: According to the chain(s) of variable assignment in the text above, {num_hops + 1} "
        f"variables are assigned the value {value}, they are:"
    )
    answer = [(b.ids(" " + var), src) for var, src in zip(chain, where)]
    return b.assemble(
        length,
        haystack,
        VT_HEADER,
        needles,
        question + prefix,
        answer,
        list(chain),
        seed,
        metadata={"value": value},
    )


_DEFAULTS: dict[str, dict] = {
    "passkey": {},
    "niah_single": {},
    "niah_multikey": {"num_keys": 4},
    "niah_multivalue": {"num_values": 4},
    "niah_multiquery": {"num_keys": 4, "num_queries": 4},
    "mqar": {},
    "variable_tracking": {},
}
_BUILDERS = {"passkey": _passkey, "mqar": _mqar, "variable_tracking": _variable_tracking}

_DEFAULT_HAYSTACK = Haystack.procedural()


def make_sample(
    task: str, tokenizer, length: int, seed: int, haystack: Haystack | None = None, **task_kwargs
) -> RetrievalSample:
    """Build one sample of ``task`` whose ``full_ids`` has exactly ``length`` tokens.

    Deterministic in ``(task, tokenizer, length, seed, haystack, task_kwargs)``. Extra keyword
    arguments override the task defaults (e.g. ``num_keys``, ``depth``, ``num_hops``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    b = _Builder(task, tokenizer, random.Random(f"{task}:{seed}"))
    kwargs = {**_DEFAULTS[task], **task_kwargs}
    fn = _BUILDERS.get(task, _niah)
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("b", "length", "haystack", "seed")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {task!r}; allowed: {allowed}")
    return fn(b, length, haystack or _DEFAULT_HAYSTACK, seed, **kwargs)
