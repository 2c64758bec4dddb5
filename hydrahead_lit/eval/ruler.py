"""RULER-style synthetic suite: greedy generation on task x length cells, scored by string matching.

Samples come from :func:`hydrahead_lit.data.synthetic.make_sample`, the generator that also feeds the
training mixes. A cell is ``num_samples`` samples of one task at one context length; sample ``i``
uses seed ``seed * 1_000_003 + i``, so every cell is reproducible and lengths share nothing but the
recipe. The context length counts the prompt plus the reference answer (like RULER's
``max_seq_length``, which includes the answer budget); generation may run past it only up to the
model's limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from hydrahead_lit.data.haystack import Haystack
from hydrahead_lit.data.synthetic import TASKS, RetrievalSample, make_sample
from hydrahead_lit.eval.metrics import ExactMatch, StringMatchAll, StringMatchPart

# RULER's tokens_to_generate: niah 128, vt 30. passkey and mqar are not RULER tasks: their answers
# are one 5-digit key and four 4-digit values, so 32 and 64 tokens leave ample room.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "passkey": 32,
    "niah_single": 128,
    "niah_multikey": 128,
    "niah_multivalue": 128,
    "niah_multiquery": 128,
    "mqar": 64,
    "variable_tracking": 30,
}


def check_tasks(tasks: Sequence[str]) -> None:
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names from {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")


def check_cells_fit(
    tokenizer: Any,
    tasks: Sequence[str],
    lengths: Sequence[int],
    num_samples: int,
    seed: int,
    haystack: Haystack | None = None,
) -> None:
    """ValueError naming every task whose samples do not fit the shortest length.

    Builds exactly the samples the suite will use at that length. A sample's needles, question and
    answer are drawn before its filler and do not depend on the length, so what fits the shortest
    length fits every longer one.
    """
    bad, n = [], min(lengths)
    for task in tasks:
        failed = []
        for i in range(num_samples):
            try:
                make_sample(task, tokenizer, n, sample_seed(seed, i), haystack)
            except ValueError as e:
                failed.append(str(e))
        if failed:
            bad.append(f"{task}: {len(failed)} of {num_samples} samples do not fit {n} tokens, e.g. {failed[0]}")
    if bad:
        raise ValueError(f"some cells cannot be built; raise the shortest length ({n}) or drop these tasks:\n  "
                         + "\n  ".join(bad))  # fmt: skip


def new_token_budget(task: str, max_new_tokens: int | dict[str, int] | None) -> int:
    """Tokens to generate for ``task``: RULER's default, or a config override (int for all, or per task)."""
    if isinstance(max_new_tokens, dict):
        budget = max_new_tokens.get(task, DEFAULT_MAX_NEW_TOKENS[task])
    else:
        budget = DEFAULT_MAX_NEW_TOKENS[task] if max_new_tokens is None else max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {budget} for {task!r}")
    return budget


def sample_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


class _StopAtNewline(StoppingCriteria):
    """Stop a row once it has generated a token whose text contains a newline (answers are one line)."""

    def __init__(self, newline_ids: torch.Tensor, prompt_len: int) -> None:
        self.newline_ids, self.prompt_len = newline_ids, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_len :]
        return torch.isin(new, self.newline_ids.to(new.device)).any(dim=1)


_NEWLINE_IDS: dict[int, tuple[Any, torch.Tensor]] = {}


def newline_token_ids(tokenizer: Any) -> torch.Tensor:
    """Ids of every token whose decoded text contains a newline (cached per tokenizer object)."""
    cached = _NEWLINE_IDS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:  # an id can be reused once a tokenizer is freed
        ids = range(len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in ids])
        cached = (tokenizer, torch.tensor([i for i, t in zip(ids, texts) if "\n" in t], dtype=torch.long))
        _NEWLINE_IDS[id(tokenizer)] = cached
    return cached[1]


def completion_text(tokenizer: Any, new_ids: Sequence[int]) -> str:
    """Text of the generated tokens up to EOS, first line only (what is scored)."""
    ids = list(new_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).split("\n", 1)[0]


@torch.inference_mode()
def generate_batch(model: nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of equal-length ``prompts`` (no padding: LA states must not see pad tokens)."""
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        # Greedy whatever the model's generation_config suggests (sampling, repetition penalties).
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        stopping_criteria=StoppingCriteriaList([_StopAtNewline(newline_token_ids(tokenizer), ids.shape[1])]),
    )
    return [completion_text(tokenizer, row[ids.shape[1] :].tolist()) for row in out]


def make_haystack(spec: str | Haystack | None) -> Haystack | None:
    """``"procedural"`` (default: the demo grammar), ``"noise"`` (RULER's repeated sentences), or the
    path of a prepared corpus (real text, the nearest offline stand-in for RULER's essays)."""
    if spec is None or isinstance(spec, Haystack):
        return spec
    if spec == "procedural":
        return None  # make_sample's default, shared across calls (its tokenized pool is cached)
    if spec == "noise":
        return Haystack.noise()
    from pathlib import Path

    if not Path(spec).expanduser().is_dir():
        raise ValueError(f"haystack {spec!r} is neither 'procedural', 'noise' nor a prepared corpus directory")
    return Haystack.from_corpus(Path(spec).expanduser())


def make_cell(
    task: str, tokenizer: Any, length: int, num_samples: int, seed: int, haystack: Haystack | None = None
) -> list[RetrievalSample]:
    return [make_sample(task, tokenizer, length, sample_seed(seed, i), haystack) for i in range(num_samples)]


def run_cell(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    length: int,
    num_samples: int,
    seed: int,
    max_new_tokens: int | dict[str, int] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    haystack: str | Haystack | None = None,
) -> dict[str, Any]:
    """Score one cell: ``{"score", "string_match_part", "exact_match", "n", "examples"}`` (scores x100)."""
    samples = make_cell(task, tokenizer, length, num_samples, seed, make_haystack(haystack))
    budget = new_token_budget(task, max_new_tokens)
    metrics = {"score": StringMatchAll(), "string_match_part": StringMatchPart(), "exact_match": ExactMatch()}
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(samples):  # batch only prompts of equal length
        by_len.setdefault(len(s.input_ids), []).append(i)
    preds: list[str] = [""] * len(samples)
    for plen, idx in sorted(by_len.items()):
        n_new = budget if limit is None else max(1, min(budget, limit - plen))
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            texts = generate_batch(model, tokenizer, [samples[i].input_ids for i in chunk], n_new)
            for i, t in zip(chunk, texts):
                preds[i] = t
    refs = [s.answers for s in samples]
    answers = [[tokenizer.decode(s.answer_ids, skip_special_tokens=True)] for s in samples]
    metrics["score"].update(preds, refs)
    metrics["string_match_part"].update(preds, refs)
    metrics["exact_match"].update(preds, answers)
    out: dict[str, Any] = {k: round(float(m.compute()), 4) for k, m in metrics.items()}
    out["n"] = len(samples)
    out["examples"] = [{"prediction": p, "answers": r} for p, r in zip(preds[:2], refs[:2])]
    return out


def run_suite(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    lengths: Sequence[int],
    num_samples: int,
    seed: int = 0,
    max_new_tokens: int | dict[str, int] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    on_cell: Callable[[str, int, dict], None] | None = None,
    haystack: str | Haystack | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """``{task: {length: cell result}}`` for every cell (see :func:`run_cell`); deterministic.

    Students decode with their hybrid cache (``generate`` installs it), teachers with the standard
    one. ``limit`` caps prompt + generated tokens (the model's context limit). ``on_cell`` is called
    after each cell (logging, progress). ``haystack``: see :func:`make_haystack`.
    """
    check_tasks(tasks)
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1 (got {num_samples}, {batch_size})")
    if limit is not None:
        from hydrahead_lit.eval.load import check_lengths

        check_lengths(list(lengths), limit)
    hay = make_haystack(haystack)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for task in tasks:
        for length in lengths:
            cell = run_cell(model, tokenizer, task, length, num_samples, seed, max_new_tokens, batch_size, limit, hay)
            results.setdefault(task, {})[length] = cell
            if on_cell is not None:
                on_cell(task, length, cell)
    return results


def average_by_length(results: dict[str, dict[int, dict[str, Any]]]) -> dict[int, float]:
    """Mean score over tasks at each length (RULER's per-length average)."""
    lengths = sorted({n for cells in results.values() for n in cells})
    return {
        n: round(sum(cells[n]["score"] for cells in results.values() if n in cells)
                 / sum(n in cells for cells in results.values()), 4)
        for n in lengths
    }  # fmt: skip
