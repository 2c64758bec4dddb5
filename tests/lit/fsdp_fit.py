"""Run by test_fsdp.py: a tiny stage-2 fit on 2 CPU processes (gloo) with ModelParallelStrategy (FSDP2).

usage: python tests/lit/fsdp_fit.py TEACHER TWIN OUT MAX_STEPS [CKPT] [--compile-blocks]
Saves a sharded (DCP) checkpoint to OUT/ckpt and the consolidated student to OUT/student; OUT/result_STEPS.json
holds the step reached, whether the parameters were sharded, and the last training loss.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hydrahead_lit.callbacks import ExportStudent  # noqa: E402
from hydrahead_lit.lit import DistillationModule  # noqa: E402
from tests.lit.conftest import loader  # noqa: E402


def main() -> None:
    compile_blocks = "--compile-blocks" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--compile-blocks"]
    teacher, twin, out, steps = args[0], args[1], Path(args[2]), int(args[3])
    ckpt = args[4] if len(args) > 4 else None
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = DistillationModule(
        teacher=teacher, init_from=twin, plan={"method": "manual", "fa_groups": {"1": [0]}},
        lr=1e-2, warmup_steps=0, activation_checkpointing=True, compile_blocks=compile_blocks,
    )  # fmt: skip
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        callbacks=[
            ModelCheckpoint(dirpath=out / "ckpt", filename="last", every_n_train_steps=2, enable_version_counter=False),
            ExportStudent(dirpath=str(out / "student"), overwrite=ckpt is not None),
        ],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt)
    if trainer.is_global_zero:
        sharded = [type(p).__name__ for p in module.student.parameters()]
        info = {"global_step": trainer.global_step, "dtensor": all(t == "DTensor" for t in sharded),
                "loss": float(trainer.callback_metrics["train/loss"]),
                "compiled_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}  # fmt: skip
        (out / f"result_{steps}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
