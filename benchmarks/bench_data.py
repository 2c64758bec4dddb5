"""Measure corpus preparation and streaming throughput (CPU only).

1. Preparation: ``prepare_corpus`` over procedural demo documents with 1 and N workers; tokens/s
   overall and per worker (wall clock, including worker start-up and the chunk checksums).
2. Streaming: ``TokenDataModule`` train loader at ``--seq-len`` (default 4096) with
   ``--loader-workers`` (default 2) workers; tokens/s delivered to a consumer that only touches
   each batch, with 0 and 10% synthetic retrieval rows. The first batch (worker start-up) is
   excluded from the rate.
3. With ``--python-corpus-mb N``: one JSONL file of N MiB of installed Python sources (the miniature's
   ``--corpus python``), prepared with JSONL shards of 64 MiB (the old cut) and of ``SHARD_BYTES``.

    python benchmarks/bench_data.py --markdown data.md [--tokenizer /models/Qwen3-1.7B]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydrahead_lit.data.demo import write_demo_corpus  # noqa: E402
from hydrahead_lit.data.prepare import load_tokenizer, prepare_corpus  # noqa: E402
from hydrahead_lit.data.sources import SHARD_BYTES, make_shards  # noqa: E402
from hydrahead_lit.lit.datamodule import TokenDataModule  # noqa: E402


def bench_prepare(src: Path, out: Path, tokenizer: str, seq_len: int, workers: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    m = prepare_corpus([str(src)], out, tokenizer, seq_len, num_workers=workers, overwrite=True)
    return m.num_tokens, time.perf_counter() - t0


def bench_python_jsonl(work: Path, tokenizer: str, seq_len: int, workers: int, mb: int) -> list[str]:
    """Rows of the one-JSONL preparation at two shard sizes (the file is written once, not counted)."""
    from hydrahead_lit.experiments.corpus import write_python_corpus

    write_python_corpus(work / "py", mb << 20)
    src = work / "py" / "train.jsonl"
    tok = load_tokenizer(tokenizer)
    rows = []
    for shard_bytes in (64 << 20, SHARD_BYTES):
        n_shards = len(make_shards([src], shard_bytes))
        t0 = time.perf_counter()
        m = prepare_corpus([str(src)], work / "py_prepared", tok, seq_len, num_workers=workers, overwrite=True,
                           shard_bytes=shard_bytes)  # fmt: skip
        secs = time.perf_counter() - t0
        rows.append(f"| prepare one {src.stat().st_size / 2**20:.0f} MiB Python JSONL, {shard_bytes >> 20} MiB shards "
                    f"({n_shards}), {workers} worker(s) | {m.num_tokens:,} tokens in {secs:.1f} s | "
                    f"{m.num_tokens / secs:,.0f} | {m.num_tokens / secs / workers:,.0f} |")  # fmt: skip
    return rows


def bench_stream(directory: Path, tokenizer: str, seq_len: int, workers: int, batch_size: int,
                 synthetic: float, max_batches: int, mixture: bool = False) -> tuple[int, float, int]:  # fmt: skip
    dirs = [str(directory)] * (2 if mixture else 1)  # a mixture of the corpus with itself: same cost
    dm = TokenDataModule(
        dirs, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size, num_workers=workers,
        synthetic_fraction=synthetic, synthetic_tasks=["passkey", "niah_single", "niah_multikey", "mqar"],
    )  # fmt: skip
    dm.setup("fit")
    tokens, n, t0 = 0, 0, None
    for batch in dm.train_dataloader():
        checksum = int(batch["input_ids"][:, -1].sum())  # the consumer touches the batch
        del checksum
        n += 1
        if t0 is None:
            t0 = time.perf_counter()  # after the first batch: steady state only
            continue
        tokens += batch["input_ids"].numel()
        if n == max_batches:
            break
    return tokens, time.perf_counter() - (t0 or time.perf_counter()), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default="demo")
    p.add_argument("--docs", type=int, default=40_000, help="demo documents to prepare (~120 tokens each)")
    p.add_argument("--prep-workers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-batches", type=int, default=400)
    p.add_argument("--python-corpus-mb", type=int, default=0, help="also prepare a Python-source JSONL of this size")
    p.add_argument("--markdown", help="write the result table to this file too")
    args = p.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        t0 = time.perf_counter()
        write_demo_corpus(work / "src", args.docs, seed=0, docs_per_file=2000)
        gen_s = time.perf_counter() - t0
        rows = []
        for w in sorted({1, args.prep_workers}):
            n_tok, secs = bench_prepare(work / "src", work / "prepared", args.tokenizer, args.seq_len, w)
            rate = n_tok / secs
            rows.append(
                f"| prepare, {w} worker(s) | {n_tok:,} tokens in {secs:.1f} s | {rate:,.0f} | {rate / w:,.0f} |"
            )
        if args.python_corpus_mb:
            rows += bench_python_jsonl(work, args.tokenizer, args.seq_len, args.prep_workers, args.python_corpus_mb)
        for synthetic, mixture in ((0.0, False), (0.1, False), (0.0, True)):
            n_tok, secs, n = bench_stream(work / "prepared", args.tokenizer, args.seq_len, args.loader_workers,
                                          args.batch_size, synthetic, args.max_batches, mixture)  # fmt: skip
            rate = n_tok / secs
            what = "2-directory mixture (2 loaders)" if mixture else f"{synthetic:.0%} synthetic"
            rows.append(
                f"| stream seq_len {args.seq_len}, batch {args.batch_size}, {args.loader_workers} workers, "
                f"{what} | {n_tok:,} tokens ({n - 1} batches) in {secs:.2f} s | {rate:,.0f} | "
                f"{rate / max(1, args.loader_workers):,.0f} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import litdata
    import tokenizers
    import torch

    header = [
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible; "
        f"python {platform.python_version()}, torch {torch.__version__}, litdata {litdata.__version__}, "
        f"tokenizers {tokenizers.__version__}; 1-minute load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other processes share these cores)",
        f"- tokenizer: {args.tokenizer}; corpus: {args.docs:,} procedural demo documents "
        f"(generated in {gen_s:.1f} s, not counted)",
        f"- command: `python benchmarks/bench_data.py {shlex.join(sys.argv[1:])}`",
        "",
        "| measurement | amount | tokens/s | tokens/s per worker |",
        "| --- | --- | --- | --- |",
    ]
    text = "\n".join(header + rows) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
