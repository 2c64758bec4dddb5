"""Write a GGUF teacher once as a Hugging Face model directory (config, safetensors, tokenizer,
generation config), so that later runs read plain safetensors instead of dequantizing the file again.

The directory is written next to its destination under a temporary name and renamed when complete,
so an interrupted import leaves no half-written teacher behind; an existing directory is replaced only
when asked and only when it was written by this import (it holds `gguf_source.json`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from hydrahead_lit.teachers.gguf import check_gguf_architecture, load_gguf_teacher, load_gguf_tokenizer
from hydrahead_lit.teachers.load import teacher_config, torch_dtype

SOURCE_RECORD = "gguf_source.json"


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is a file; choose a directory to write the teacher to")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{out_dir} is not empty; choose a new directory or pass --overwrite to replace an "
                             "earlier import there")  # fmt: skip
        if not (out_dir / SOURCE_RECORD).is_file():
            raise ValueError(f"{out_dir} was not written by import-gguf (no {SOURCE_RECORD}); it is left as it is: "
                             "choose a new directory")  # fmt: skip


def import_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "bfloat16", overwrite: bool = False
                ) -> dict[str, Any]:  # fmt: skip
    """Write the teacher in `gguf_file` to `out_dir` in `dtype`; returns what was recorded in gguf_source.json."""
    start = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    meta = check_gguf_architecture(gguf_file)  # before anything is read or written
    _check_destination(out, overwrite)
    torch_dtype(dtype)
    model = load_gguf_teacher(gguf_file, torch_dtype(dtype))
    tokenizer = load_gguf_tokenizer(gguf_file)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(f"the GGUF's tokenizer has {len(tokenizer)} tokens but its embedding only {vocab}")

    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted import into the same destination
    partial.mkdir(parents=True)
    model.config.name_or_path = ""  # not a hub id; the source is recorded below
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    c = model.config
    record = {
        **meta,
        "source": str(Path(gguf_file).expanduser().resolve()),
        "dtype": dtype,
        "model_type": c.model_type,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (partial / SOURCE_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    teacher_config(partial)  # the written directory passes the checks every teacher directory gets
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record
