"""`python -m hydrahead_lit.teachers import-gguf FILE OUT_DIR [--dtype bfloat16] [--overwrite]`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hydrahead_lit.teachers", description="Teacher model utilities.")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-gguf", help="write a GGUF teacher as a Hugging Face model directory (offline)")
    imp.add_argument("file", type=Path, help="the .gguf file")
    imp.add_argument("out_dir", type=Path, help="directory to write (must be new or empty)")
    imp.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                     help="dtype of the written weights (default bfloat16)")  # fmt: skip
    imp.add_argument("--overwrite", action="store_true", help="replace an earlier import in OUT_DIR")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hydrahead_lit.teachers.import_gguf import import_gguf

    try:
        r = import_gguf(args.file, args.out_dir, dtype=args.dtype, overwrite=args.overwrite)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    types = ", ".join(f"{k} x{v}" for k, v in sorted(r["tensor_types"].items()))
    print(f"{r['file']} ({r['architecture']}, tensors {types}) -> {args.out_dir.resolve()}\n"
          f"  {r['model_type']}: {r['num_hidden_layers']} layers, {r['num_attention_heads']} heads, "
          f"{r['num_key_value_heads']} KV heads, vocabulary {r['vocab_size']}, {r['max_position_embeddings']} "
          f"positions, {r['parameters'] / 1e6:.1f}M parameters in {r['dtype']} ({r['seconds']:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
