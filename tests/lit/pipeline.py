"""A tiny pipeline for command-line tests: a 2-layer teacher on the demo tokenizer, a prepared demo corpus,
the stage-1 twin export, and stage configs made from configs/demo (paths, steps and sizes shrunk).

Everything is built in seconds on CPU; stages run through `hydrahead_lit.cli` like `python main.py fit`.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[2]
SEQ = 32
MAX_POSITIONS = 256


def make_teacher(path: Path, seed: int = 0, tokenizer: bool = True, max_positions: int = MAX_POSITIONS) -> Path:
    """A 2-layer Qwen3 (2 KV groups a layer) with the demo tokenizer's 1,024-token vocabulary."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hydrahead_lit.data.demo import demo_tokenizer

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_positions,
                      tie_word_embeddings=True)  # fmt: skip
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    if tokenizer:
        demo_tokenizer().save_pretrained(path)
    return path


def make_twin(teacher: Path, path: Path) -> Path:
    """The stage-1 twin student of `teacher`, as stage 1 exports it (with the tokenizer)."""
    from transformers import AutoModelForCausalLM

    import hydrahead_lit as hh
    from hydrahead_lit.data.demo import demo_tokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher, local_files_only=True)
    hh.convert(model, None, twins=True).save_pretrained(path)
    demo_tokenizer().save_pretrained(path)
    return path


def make_corpus(path: Path, n_docs: int = 120, seed: int = 1, seq_len: int = SEQ) -> Path:
    from hydrahead_lit.data.demo import write_demo_corpus
    from hydrahead_lit.data.prepare import prepare_corpus

    src = write_demo_corpus(path.with_suffix(".src"), n_docs, seed=seed)
    prepare_corpus([str(p) for p in src], path, "demo", seq_len, chunk_blocks=8)
    return path


def stage_config(stage: str, run: Path, teacher: Path, data: Path, steps: int = 4, **model: Any) -> dict:
    """configs/demo/<stage>.yaml for the tiny pipeline: run directory `run`, `steps` steps, no synthetic rows,
    validation once at the end; `model` entries update `model.init_args`."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo" / f"{stage}.yaml").read_text())
    t = cfg["trainer"]
    t.update(max_steps=steps, val_check_interval=steps, limit_val_batches=1, log_every_n_steps=1)
    t["logger"]["init_args"].update(save_dir=str(run.parent), name=run.name, version="")
    callbacks = []
    for cb in t["callbacks"]:
        args = cb.setdefault("init_args", {})
        if cb["class_path"].endswith("HeadSelectionCallback"):
            args.update(ratio=3.0, probe_tasks=["passkey"], probe_length=160, num_probes=2, probe_batch_size=2)
        elif cb["class_path"].endswith("ExportStudent"):
            args["dirpath"] = str(run / "student")
        elif cb["class_path"].endswith("ModelCheckpoint"):
            args["every_n_train_steps"] = steps
        callbacks.append(cb)
    t["callbacks"] = callbacks
    m = cfg["model"]["init_args"]
    m["teacher"] = str(teacher)
    m.update(warmup_steps=1)
    m.update(model)
    d = cfg["data"]["init_args"]
    d.update(data_dirs=str(data), val_dir=str(data), tokenizer=str(teacher), seq_len=SEQ, batch_size=2,
             synthetic_fraction=0.0)  # fmt: skip
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fit(config: Path, *extra: str) -> Any:
    """`python main.py fit --config <config> <extra>` in this process; returns the LightningCLI."""
    from hydrahead_lit.cli import build_cli

    return build_cli(["fit", "--config", str(config), *extra])


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `directory`."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


class KillAt(Callback):
    """Kills its own process with SIGKILL (as `kill -9` does) once `step` optimizer steps are done: no
    cleanup, no final checkpoint, no flush beyond what the run already wrote."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
