"""Regenerate the committed demo tokenizer in data/demo/tokenizer (deterministic).

Usage: python data/demo/make_tokenizer.py [--vocab-size 1024]
"""

from __future__ import annotations

import argparse

from hydrahead_lit.data.demo import DEMO_TOKENIZER_DIR, DEMO_VOCAB_SIZE, build_demo_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=DEMO_VOCAB_SIZE)
    parser.add_argument("--output", default=str(DEMO_TOKENIZER_DIR))
    args = parser.parse_args()
    tok = build_demo_tokenizer(args.output, vocab_size=args.vocab_size)
    print(f"wrote {args.output} (vocab {len(tok)})")


if __name__ == "__main__":
    main()
