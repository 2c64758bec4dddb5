"""Run by test_fsdp_selection.py: head selection at the end of a tiny FSDP2 fit on 2 CPU processes (gloo).

usage: python tests/selection/fsdp_select.py OUT
Every rank writes OUT/rank{r}.json with the decision it holds; rank 0 also writes OUT/sel.json.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hydrahead_lit.callbacks.head_selection import HeadSelectionCallback  # noqa: E402
from hydrahead_lit.modeling.arch import decoder_layers  # noqa: E402
from hydrahead_lit.modeling.probe import AttentionProbe  # noqa: E402
from tests.selection.planted import planted_teacher  # noqa: E402
from tests.selection.test_callback import PROBES, TwinModule, _alignment_error  # noqa: E402


class ShardedTwinModule(TwinModule):
    def training_step(self, batch, batch_idx):
        self.steps += 1
        probe = AttentionProbe(alignment=True)
        out = self.student(input_ids=batch[0], use_cache=False, logits_to_keep=1, attention_probe=probe)
        pairs = probe.alignment_pairs(len(decoder_layers(self.student)))
        # FSDP2 on CPU (torch 2.13, gloo) segfaults in backward when the root module's output is not in the
        # loss graph (the zero term keeps it there) or when a unit mixes frozen and trainable parameters
        # (hence everything trains here, at learning rate 0: the weights, so the scores, stay the teacher's)
        return sum(torch.mean((la - fa) ** 2) for fa, la in pairs) + 0.0 * out.logits.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def configure_model(self) -> None:
        self.student.requires_grad_(True)
        mesh = self.device_mesh["data_parallel"]
        for layer in decoder_layers(self.student):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.student, mesh=mesh)


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = ShardedTwinModule(planted_teacher(), _alignment_error())
    callback = HeadSelectionCallback(output=str(out / "sel.json"), method="hydrahead", ratio=3.0, **PROBES)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=2, logger=False, enable_checkpointing=False,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, callbacks=[callback],
    )  # fmt: skip
    ids = torch.randint(0, 1024, (8, 32), generator=torch.Generator().manual_seed(0))
    trainer.fit(module, DataLoader(TensorDataset(ids), batch_size=2))
    layers = decoder_layers(module.student)  # (the root's own parameters may stay unsharded after a forward)
    sharded = all(type(p).__name__ == "DTensor" for p in layers.parameters())
    info = {"chosen": callback.result["chosen"], "scores": callback.result["scores"], "dtensor": sharded}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
