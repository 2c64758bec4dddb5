"""What a checkpoint records about the run that made it, and the check a resume makes against it.

`ckpt_path` resumes the *same* run: the same stage, the same teacher and the same head plan. A stage
module describes its run with `run_record()` (built from its arguments and `config.json` files, no
weights read); `on_save_checkpoint` stores it under `RECORD_KEY`. Before a resumed run writes anything,
the command line compares the checkpoint's record with the record of the configured module
(`record_differences`) and refuses the checkpoint, naming every difference. The teacher is compared by
a fingerprint of its config and (sampled) weight files, so a moved teacher directory still resumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RECORD_KEY = "hydrahead_run"
COUNTERS_KEY = "hydrahead_counters"
STAGE_KEY = "hydrahead_stage"
RECORD_VERSION = 1
# config.json entries that say nothing about the model itself
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "use_cache")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Lightning's special ckpt_path values (resolved by the Trainer, not files)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _sampled_digest(path: Path, block: int = 1 << 20) -> list:
    """Name, size and the SHA-256 of three 1 MiB blocks (start, middle, end) of a weight file: two
    fine-tunes of one architecture have equal sizes but other bytes, and reading 3 MiB costs nothing."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - block // 2), max(0, size - block)}):
            f.seek(offset)
            h.update(f.read(block))
    return [path.name, size, h.hexdigest()[:16]]


def teacher_fingerprint(path: str | Path) -> str:
    """16 hex digits identifying a teacher: its `config.json` (minus volatile entries) and a sampled
    digest of each weight file (`_sampled_digest`); for a single weights file (GGUF), that file's."""
    p = Path(path).expanduser()
    parts: dict[str, Any] = {}
    if p.is_file():
        parts["file"] = _sampled_digest(p)
    elif p.is_dir():
        cfg = p / "config.json"
        if cfg.is_file():
            raw = json.loads(cfg.read_text())
            parts["config"] = {k: v for k, v in raw.items() if k not in _VOLATILE_CONFIG_KEYS}
        parts["weights"] = sorted(
            _sampled_digest(f) for f in p.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
        )
    else:
        raise ValueError(f"teacher path {str(p)!r} does not exist")
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_key(plan: dict | None) -> list | None:
    """What decides a student's structure in a plan dict: its shape and FA groups (None: stage-1 twins)."""
    if plan is None:
        return None
    return [plan["num_layers"], plan["num_kv_groups"], plan["group_size"], [list(g) for g in plan["fa_groups"]]]


def describe_plan(plan: dict | None) -> str:
    if plan is None:
        return "none (every head with its LA twin: stage 1)"
    groups = {i: list(g) for i, g in enumerate(plan["fa_groups"]) if g}
    total = plan["num_layers"] * plan["num_kv_groups"]
    return f"FA KV groups {groups or '{}'} ({sum(len(g) for g in plan['fa_groups'])}/{total})"


def make_record(stage: str, module: type, teacher: str | Path | None, plan: dict | None,
                model: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """The record of a run: stage, module class, teacher (path and fingerprint), head plan, and for a
    model trained from scratch its config (`model`)."""
    return {
        "version": RECORD_VERSION,
        "stage": stage,
        "module": f"{module.__module__}.{module.__qualname__}",
        "teacher": None if teacher is None else {"path": str(teacher), "fingerprint": teacher_fingerprint(teacher)},
        "plan": plan,
        "model": model,
    }


def record_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every way the run of `current` differs from the run that wrote `saved`, one phrase each."""
    diffs = []
    if saved.get("stage") != current.get("stage"):
        diffs.append(
            f"stage: the checkpoint is of stage '{saved.get('stage')}' ({saved.get('module')}), this config runs "
            f"stage '{current.get('stage')}' ({current.get('module')})"
        )
        return diffs  # nothing else is comparable across stages
    t_saved, t_now = saved.get("teacher"), current.get("teacher")
    if (t_saved is None) != (t_now is None) or (t_saved and t_saved["fingerprint"] != t_now["fingerprint"]):

        def name(t: dict | None) -> str:
            return "no teacher" if t is None else f"{t['path']} (fingerprint {t['fingerprint']})"

        diffs.append(f"teacher: the checkpoint was trained against {name(t_saved)}, this config names {name(t_now)}")
    if plan_key(saved.get("plan")) != plan_key(current.get("plan")):
        diffs.append(
            f"plan: the checkpoint's student has {describe_plan(saved.get('plan'))}, this config's has "
            f"{describe_plan(current.get('plan'))}"
        )
    if saved.get("model") != current.get("model"):
        diffs.append(f"model_config: the checkpoint's is {saved.get('model')}, this config's {current.get('model')}")
    return diffs


def refusal(ckpt_path: str | Path, diffs: list[str]) -> str:
    return (
        f"ckpt_path {ckpt_path} is not a checkpoint of this run: " + "; ".join(diffs) + ". ckpt_path resumes the "
        "same stage with the same teacher and plan; start a new stage from the previous stage's exported student "
        "with init_from (nothing was written)"
    )


def check_checkpoint(checkpoint: dict[str, Any], current: dict[str, Any], ckpt_path: str | Path = "ckpt_path") -> None:
    """ValueError naming every difference between a loaded checkpoint's run and `current`."""
    saved = checkpoint.get(RECORD_KEY)
    if saved is None:  # written before records existed: only its stage is known
        stage = checkpoint.get(STAGE_KEY)
        if stage is None or stage == current["stage"]:
            return
        saved = {"stage": stage, "module": "?"}
    diffs = record_differences(saved, current)
    if diffs:
        raise ValueError(refusal(ckpt_path, diffs))


@dataclass
class CheckpointMeta:
    """The parts of a checkpoint a resume needs before any model is built (no weights are kept)."""

    path: Path
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    stage: str | None = None
    global_step: int = 0

    def as_checkpoint(self) -> dict[str, Any]:
        return {RECORD_KEY: self.record, STAGE_KEY: self.stage}


def read_checkpoint_meta(ckpt_path: str | Path) -> CheckpointMeta:
    """Read a checkpoint file (memory-mapped, weights untouched) or a distributed checkpoint directory's
    `meta.pt`. ValueError when the path does not exist or is not a Lightning checkpoint."""
    p = Path(ckpt_path).expanduser()
    if not p.exists():
        raise ValueError(f"ckpt_path {str(p)!r} does not exist; give a checkpoint file (or a sharded checkpoint "
                         "directory) written by this stage, e.g. <run>/checkpoints/last.ckpt")  # fmt: skip
    source = p / "meta.pt" if p.is_dir() else p
    if not source.is_file():
        raise ValueError(f"ckpt_path {p} is a directory without meta.pt: not a Lightning checkpoint")
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=True, mmap=not p.is_dir())
    except Exception as e:  # a truncated or foreign file: say which, not an unpickling traceback
        raise ValueError(f"ckpt_path {source} cannot be read as a checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise ValueError(f"ckpt_path {source} is not a Lightning checkpoint (no global_step)")
    return CheckpointMeta(
        path=p,
        hyper_parameters=dict(ckpt.get("hyper_parameters") or {}),
        record=ckpt.get(RECORD_KEY),
        stage=ckpt.get(STAGE_KEY),
        global_step=int(ckpt["global_step"]),
    )
