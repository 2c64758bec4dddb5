"""Tokenize a text corpus into LitData chunks for HydraHead training, or check a prepared directory.

Examples:
    python data/prepare.py --tokenizer /models/Qwen3-1.7B --input "corpus/**/*.jsonl" \
        --output data/optimized/corpus --seq-len 4096 --num-workers 16
    python data/prepare.py --verify data/optimized/corpus    # every chunk: size, SHA-256, token ids
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hydrahead_lit.data.demo import write_demo_corpus  # noqa: E402
from hydrahead_lit.data.prepare import DEFAULT_CHUNK_BLOCKS, prepare_corpus, verify_prepared  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", nargs="+", help="files, directories or globs (.txt/.md, .jsonl, .parquet; .gz ok)")
    p.add_argument("--output", help="directory to create (must be empty unless --overwrite)")
    p.add_argument("--tokenizer", help="local tokenizer/model directory (the teacher's) or 'demo'")
    p.add_argument("--seq-len", type=int, help="training sequence length; rows hold seq_len + 1")
    p.add_argument("--text-field", default="text", help="JSONL key / Parquet column holding the text")
    p.add_argument("--num-workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    p.add_argument("--chunk-blocks", type=int, default=DEFAULT_CHUNK_BLOCKS, help="rows of seq_len + 1 per chunk")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output (only after success)")
    p.add_argument("--verify", nargs="?", const=True, default=None, metavar="DIR",
                   help="check every chunk of the prepared directory DIR (size, SHA-256, token ids below the "
                        "vocabulary size) and exit; without DIR: check --output after writing it")  # fmt: skip
    p.add_argument(
        "--demo-docs", type=int, default=0, help="write N procedural demo documents to <output>.src and use them"
    )
    args = p.parse_args(argv)
    if isinstance(args.verify, str):
        if args.input or args.demo_docs or args.output:
            p.error("--verify DIR checks an existing directory; prepare with --output (and plain --verify) instead")
        verify(args.verify)
        return
    missing = [f"--{name.replace('_', '-')}" for name in ("output", "tokenizer", "seq_len") if not getattr(args, name)]
    if missing:
        p.error(f"preparing a corpus needs {', '.join(missing)} (or check a directory with --verify DIR)")
    inputs = args.input
    if args.demo_docs:
        src = Path(args.output).with_suffix(".src")
        write_demo_corpus(src, args.demo_docs, seed=0)
        inputs = [str(src)]
    if not inputs:
        p.error("give --input (or --demo-docs N)")
    try:
        m = prepare_corpus(
            inputs,
            args.output,
            args.tokenizer,
            args.seq_len,
            text_field=args.text_field,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            chunk_blocks=args.chunk_blocks,
        )
        if args.verify:
            verify_prepared(args.output, full=True)
    except ValueError as e:  # bad input: the message says what to fix, a traceback would bury it
        sys.exit(f"error: {e}")
    print(
        f"wrote {args.output}: {m.num_tokens:,} tokens, {m.num_documents:,} documents, {m.num_chunks} chunks, "
        f"{m.num_blocks:,} rows of {m.block_size} tokens ({m.dtype}, tokenizer {m.tokenizer_fingerprint})"
    )


def verify(directory: str) -> None:
    """Check every chunk of a prepared directory; exit with the first problem, naming the file."""
    try:
        m = verify_prepared(directory, full=True)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(
        f"verified {directory}: {m.num_chunks} chunks, {m.num_blocks:,} rows of {m.block_size} tokens; every chunk "
        f"has its recorded size and SHA-256 and only token ids below {m.vocab_size} (tokenizer {m.tokenizer_name}, "
        f"{m.tokenizer_fingerprint})"
    )


if __name__ == "__main__":
    main()
