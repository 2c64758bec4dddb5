"""`ExportStudent`: save the trained student in Hugging Face format at the end of fit.

The export is the weights-only hand-off to the next stage (its `init_from`). Under FSDP2 every rank
takes part in gathering a full, CPU-offloaded state dict; rank 0 alone writes it. An existing export
is never overwritten unless `overwrite` is set, and that is checked before training starts. The
directory appears only when complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from hydrahead_lit.lit.models import save_tokenizer

LOADING_NOTE = """# HydraHead student

Exported by `hydrahead_lit` (head-level full/linear attention hybrid). Its `config.json` names the model
type `hydrahead_<family>`, which plain `transformers` does not know. Load it with

```python
import hydrahead_lit as hh
model = hh.load_student("<this directory>")
# or, once hydrahead_lit is imported, the usual way:
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("<this directory>")
```
"""


def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A full (unsharded) CPU state dict; a collective under FSDP2 (call it on every rank)."""
    if not _is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_hf(model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Write `state_dict` with `model`'s class and config via `save_pretrained` (offline-loadable)."""
    if not _is_sharded(model):
        model.save_pretrained(str(out_dir), state_dict=state_dict)
        return
    with torch.device("meta"):  # a plain copy of the architecture, filled with the gathered weights
        plain = type(model)(model.config)
    plain.load_state_dict(state_dict, assign=True, strict=False)
    plain.tie_weights()
    plain.save_pretrained(str(out_dir), state_dict=state_dict)


class ExportStudent(Callback):
    """Save `pl_module.student` (and the tokenizer) to `dirpath` (default `<log dir>/student`)."""

    def __init__(self, dirpath: str | None = None, overwrite: bool = False) -> None:
        """
        Args:
            dirpath: export directory; the next stage's `init_from` points at it.
            overwrite: replace an existing export (otherwise fit refuses to start).
        """
        self.dirpath = dirpath
        self.overwrite = overwrite
        self.exported: Path | None = None

    def resolve(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "student"

    def check_target(self, trainer: L.Trainer, resuming: bool) -> None:
        """ValueError when the export directory already holds a student that this run may not replace."""
        out = self.resolve(trainer)
        if (out / "config.json").exists() and not self.overwrite and not resuming:
            raise ValueError(
                f"{out} already holds an exported student; choose another ExportStudent dirpath or set "
                "overwrite: true (a resumed run with ckpt_path may overwrite its own export)"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_target(trainer, resuming=trainer.ckpt_path is not None)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        out = self.resolve(trainer)
        student = pl_module.student
        state = full_state_dict(student)  # every rank: a collective under FSDP2
        if trainer.is_global_zero:
            # Written under a temporary name and renamed when whole: a directory at `out` is always a complete
            # export (a crash mid-write leaves only the temporary one), and a replaced export goes only then.
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
            save_hf(student, state, partial)
            save_tokenizer(getattr(pl_module, "tokenizer_source", None), partial)
            (partial / "README.md").write_text(LOADING_NOTE)
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
                out.rename(old / out.name)
                partial.rename(out)
                shutil.rmtree(old)
            else:
                partial.rename(out)
            rank_zero_info(f"exported the student to {out}")
        trainer.strategy.barrier("export_student")
        self.exported = out
        return out
