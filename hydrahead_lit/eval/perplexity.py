"""Held-out perplexity over a prepared LitData directory (``data/prepare.py`` output).

Rows are read in order (no shuffle) as ``seq_len + 1`` token windows, so two runs see the same
tokens. Perplexity is ``exp`` of the mean next-token cross-entropy over every predicted token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def open_held_out(directory: str | Path, tokenizer: Any, seq_len: int | None) -> int:
    """Check ``directory`` (manifest, chunks, tokenizer) and return the row length to use."""
    from hydrahead_lit.data.manifest import validate
    from hydrahead_lit.data.prepare import verify_prepared

    d = Path(directory).expanduser()
    if not d.is_dir():
        raise ValueError(f"held-out directory {str(directory)!r} does not exist; "
                         "prepare one with `python data/prepare.py --output <dir> ...`")  # fmt: skip
    manifest = verify_prepared(d)  # ValueError naming a missing/corrupt manifest, index or chunk
    validate(manifest, tokenizer, d)
    seq_len = seq_len or manifest.seq_len
    if seq_len < 1 or seq_len + 1 > manifest.chunk_tokens:
        raise ValueError(f"perplexity seq_len {seq_len} does not fit the chunks of {d} "
                         f"({manifest.chunk_tokens} tokens); use seq_len <= {manifest.chunk_tokens - 1}")  # fmt: skip
    return seq_len


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    directory: str | Path,
    tokenizer: Any,
    seq_len: int | None = None,
    max_rows: int = 64,
    batch_size: int = 4,
    limit: int | None = None,
) -> dict[str, float | int]:
    """``{"ppl", "nll", "tokens", "rows", "seq_len"}`` over the first ``max_rows`` rows of ``directory``."""
    from litdata import StreamingDataset, TokensLoader

    seq_len = open_held_out(directory, tokenizer, seq_len)
    if limit is not None and seq_len > limit:
        raise ValueError(f"perplexity seq_len {seq_len} exceeds the model's limit of {limit}; set ppl_seq_len")
    if max_rows < 1 or batch_size < 1:
        raise ValueError(f"max_rows and batch_size must be >= 1 (got {max_rows}, {batch_size})")
    ds = StreamingDataset(str(Path(directory).expanduser()), item_loader=TokensLoader(block_size=seq_len + 1),
                          shuffle=False, drop_last=False)  # fmt: skip
    n_rows = min(max_rows, len(ds))
    if n_rows == 0:
        raise ValueError(f"{directory} holds fewer than {seq_len + 1} tokens per chunk; nothing to score")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, n_rows, batch_size):
        rows = torch.stack([torch.as_tensor(ds[i]).long() for i in range(start, min(start + batch_size, n_rows))])
        rows = rows.to(device)
        logits = model(input_ids=rows[:, :-1], use_cache=False).logits
        nll = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
        total += float(nll)
        count += rows[:, 1:].numel()
    mean = total / count
    return {"ppl": round(math.exp(mean), 4), "nll": round(mean, 6), "tokens": count, "rows": n_rows,
            "seq_len": seq_len}  # fmt: skip
