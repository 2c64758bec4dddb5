"""``EvalModule``: the evaluation suite as a LightningModule for ``python main.py test``.

    python main.py test --config configs/eval/ruler.yaml --model.checkpoint out/stage3/student

Everything is checked when the module is built (checkpoint directory, task names, lengths against
the model's limit, an existing results file), before any weights load. ``setup`` loads the model;
each ``test_step`` runs one job (a task x length cell, perplexity, or efficiency at one length) and
logs its figures; the end of the epoch writes ``results.json``, ``results.md`` and PNG plots into
``output_dir``, and to TensorBoard the per-length curves (x axis = context length), the table and the
plots as images. Under ``python main.py test`` the TensorBoard run is named after the model (``name``).
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from hydrahead_lit.data.synthetic import TASKS
from hydrahead_lit.eval import efficiency as eff
from hydrahead_lit.eval.datamodule import eval_jobs, jobs_loader
from hydrahead_lit.eval.load import check_lengths, load_model, load_tokenizer, model_kind, read_config
from hydrahead_lit.eval.load import max_length as max_length_of
from hydrahead_lit.eval.perplexity import perplexity
from hydrahead_lit.eval.report import RESULTS_NAME, TABLE_NAME, save_run, to_json, write_report
from hydrahead_lit.eval.ruler import (
    average_by_length,
    check_cells_fit,
    check_tasks,
    make_haystack,
    new_token_budget,
    run_cell,
)
from hydrahead_lit.modeling.student import is_student


def _read_png(path: str | Path) -> Any:
    """An RGB [H, W, 3] float array of a PNG file."""
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]


class EvalModule(pl.LightningModule):
    """Evaluate one saved model (HydraHead student or Hugging Face teacher directory).

    Args:
        checkpoint: model directory written by ``save_pretrained``.
        tokenizer: tokenizer directory, ``"demo"`` for the bundled one, or None for the model's own.
        tasks: synthetic tasks (default: all of ``hydrahead_lit.data.synthetic.TASKS``).
        lengths: context lengths in tokens, each <= the model's ``max_position_embeddings``.
        num_samples: samples per task x length cell.
        seed: base seed of the samples (sample i of a cell uses ``seed * 1_000_003 + i``).
        output_dir: where results go (default ``runs/<name>``); an existing results.json is kept
            unless ``overwrite``.
        name: the model's name in tables and plots (default: the checkpoint directory's name).
        held_out_dir: prepared LitData directory for perplexity (None: skipped).
        max_new_tokens: generation budget, one int for all tasks or ``{task: int}`` (None: RULER's).
        efficiency: measure cache bytes, prefill time and decode speed at ``efficiency_lengths``.
        efficiency_lengths: lengths for the efficiency figures (None: ``lengths``).
        batch_size: prompts generated together (only prompts of equal length share a batch).
        dtype: weights dtype: float32, bfloat16 or float16.
        ppl_seq_len: perplexity row length (None: the prepared directory's seq_len).
        ppl_max_rows: rows scored for perplexity.
        decode_tokens: decoded tokens per efficiency measurement.
        repeats: efficiency repeats (the median is reported).
        haystack: filler text: ``procedural`` (the demo grammar), ``noise`` (RULER's repeated
            sentences) or a prepared corpus directory of the model's tokenizer (real text).
        overwrite: replace an existing results.json in ``output_dir``.
        max_length: the longest context evaluated (None: the model's ``max_position_embeddings``). A
            larger value evaluates past the positions the model declares (RoPE extrapolates), to
            measure what a model gives there; results record both numbers.
        fast_generation: a student's decode path for the RULER answers: None (the model's default: the
            static cache and CUDA graph on CUDA), False (eager), True (fast, or an error). Answers are a
            few dozen tokens, so the fast path's one-time compile per cache shape can cost more than it saves.
    """

    def __init__(
        self,
        checkpoint: str,
        tokenizer: str | None = None,
        tasks: list[str] | None = None,
        lengths: list[int] | None = None,
        num_samples: int = 10,
        seed: int = 0,
        output_dir: str | None = None,
        name: str | None = None,
        held_out_dir: str | None = None,
        max_new_tokens: int | dict[str, int] | None = None,
        efficiency: bool = True,
        efficiency_lengths: list[int] | None = None,
        batch_size: int = 8,
        dtype: str = "float32",
        ppl_seq_len: int | None = None,
        ppl_max_rows: int = 64,
        decode_tokens: int = 16,
        repeats: int = 3,
        haystack: str = "procedural",
        overwrite: bool = False,
        max_length: int | None = None,
        fast_generation: bool | None = None,
    ) -> None:
        super().__init__()
        self.config_json = read_config(checkpoint)
        self.kind = model_kind(self.config_json)
        self.positions = max_length_of(self.config_json)
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens or null, got {max_length}")
        self.limit = max_length or self.positions
        self.tasks = list(TASKS) if tasks is None else list(tasks)
        check_tasks(self.tasks)
        self.lengths = sorted(set([256, 512] if lengths is None else lengths))
        check_lengths(self.lengths, self.limit)
        self.efficiency_lengths = sorted(set(self.lengths if efficiency_lengths is None else efficiency_lengths))
        if efficiency:
            check_lengths(self.efficiency_lengths, self.limit)
        for t in self.tasks:
            new_token_budget(t, max_new_tokens)  # ValueError on a bad budget
        if num_samples < 1 or batch_size < 1 or repeats < 1 or decode_tokens < 1:
            raise ValueError("num_samples, batch_size, repeats and decode_tokens must be >= 1")
        self.name = name or Path(checkpoint).expanduser().resolve().name
        self.output_dir = Path(output_dir or Path("runs") / self.name)
        if (self.output_dir / RESULTS_NAME).exists() and not overwrite:
            raise ValueError(f"{self.output_dir / RESULTS_NAME} exists; pass --model.overwrite true to replace it "
                             "or choose another --model.output_dir")  # fmt: skip
        if held_out_dir is not None and not Path(held_out_dir).expanduser().is_dir():
            raise ValueError(f"held_out_dir {held_out_dir!r} does not exist; prepare it with data/prepare.py "
                             "or set held_out_dir: null")  # fmt: skip
        self.tok = load_tokenizer(checkpoint, tokenizer)
        self.haystack = make_haystack(haystack)
        check_cells_fit(self.tok, self.tasks, self.lengths, num_samples, seed, self.haystack)
        self.save_hyperparameters()
        self.model: torch.nn.Module | None = None
        self._results: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- loading
    def setup(self, stage: str) -> None:
        if stage != "test":
            raise ValueError("EvalModule only evaluates: run `python main.py test ...`")
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError("evaluation runs on one device; set trainer.devices=1 (and num_nodes=1)")
        if self.model is None:  # loaded on CPU here; the strategy then moves the module to its device
            hp = self.hparams
            self.model, self.tok, _ = load_model(hp.checkpoint, self.tok, hp.dtype)
            if is_student(self.model):
                self.model.fast_generation = hp.fast_generation
        self._results = {"ruler": {}, "perplexity": None, "efficiency": {} if self.hparams.efficiency else None}
        self._t0 = time.perf_counter()

    def eval_jobs(self) -> list[dict[str, Any]]:
        hp = self.hparams
        eff_lengths = self.efficiency_lengths if hp.efficiency else []
        return eval_jobs(self.tasks, self.lengths, hp.held_out_dir is not None, eff_lengths)

    def test_dataloader(self) -> DataLoader:
        return jobs_loader(self.eval_jobs())

    # ------------------------------------------------------------------------------------ jobs
    def test_step(self, job: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        kind, task, n = job["kind"], job["task"], int(job["length"])
        if kind == "ruler":
            cell = run_cell(self.model, self.tok, task, n, hp.num_samples, hp.seed, hp.max_new_tokens,
                            hp.batch_size, self.limit, self.haystack)  # fmt: skip
            self._results["ruler"].setdefault(task, {})[n] = cell
            self.log(f"test/{task}/{n}", cell["score"], batch_size=1)
            self._curve(f"ruler/{task}", cell["score"], n)
        elif kind == "perplexity":
            ppl = perplexity(self.model, hp.held_out_dir, self.tok, hp.ppl_seq_len, hp.ppl_max_rows,
                             hp.batch_size, self.limit)  # fmt: skip
            self._results["perplexity"] = ppl
            self.log("test/perplexity", ppl["ppl"], batch_size=1)
        elif kind == "efficiency":
            fig = eff.measure(self.model, [n], hp.decode_tokens, hp.repeats, self.limit)[n]
            self._results["efficiency"][n] = fig
            self.log(f"test/cache_mib/{n}", fig["cache_bytes"] / 2**20, batch_size=1)
            self._curve("efficiency/cache_mib", fig["cache_bytes"] / 2**20, n)
            self._curve("efficiency/prefill_ms", 1000 * fig["prefill_s"], n)
            self._curve("efficiency/decode_tokens_per_s", fig["decode_tokens_per_s"], n)
        else:
            raise ValueError(f"unknown evaluation job {job}")

    def _curve(self, tag: str, value: float, length: int) -> None:
        """A TensorBoard scalar whose step is the context length (accuracy-vs-length curves)."""
        for logger in self.loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_scalar"):
                writer.add_scalar(tag, value, global_step=length)

    # --------------------------------------------------------------------------------- results
    def on_test_epoch_end(self) -> None:
        average = average_by_length(self._results["ruler"])
        for n, score in average.items():
            self.log(f"test/average/{n}", score, batch_size=1)
            self._curve("ruler/average", score, n)
        self.results = to_json(self._build_results(average))
        saved = save_run(self.results, self.output_dir)
        paths = write_report([self.results], self.output_dir, None, TABLE_NAME)
        for logger in self.loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_text"):
                writer.add_text("eval/results", Path(paths["table"]).read_text())
            if hasattr(writer, "add_image"):  # the PNG plots of results.md, as TensorBoard images
                for plot in paths["plots"]:
                    writer.add_image(f"eval/{Path(plot).stem}", _read_png(plot), dataformats="HWC")
        print(f"evaluation of {self.name}: {saved}, {paths['table']}, {len(paths['plots'])} plots")

    def _build_results(self, average: dict[int, float]) -> dict[str, Any]:
        hp, model = self.hparams, self.model
        facts: dict[str, Any] = {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "max_position_embeddings": self.positions,
            "max_length": self.limit,
            "dtype": hp.dtype,
            "kv_cache_fraction": 1.0,
        }
        if is_student(model):
            plan = model.head_plan
            facts.update(kv_cache_fraction=plan.kv_cache_fraction, fa_kv_groups=plan.num_fa_groups,
                         total_kv_groups=plan.total_groups,  # strict JSON has no Infinity: all-LA gets null
                         la_fa_ratio=None if math.isinf(plan.ratio) else plan.ratio)  # fmt: skip
        device = self.device
        return {
            "name": self.name,
            "kind": self.kind,
            "checkpoint": str(hp.checkpoint),
            "model": facts,
            "config": {
                "tasks": self.tasks,
                "lengths": self.lengths,
                "efficiency_lengths": self.efficiency_lengths,
                **{
                    k: hp[k]
                    for k in (
                        "num_samples",
                        "seed",
                        "max_new_tokens",
                        "batch_size",
                        "tokenizer",
                        "held_out_dir",
                        "decode_tokens",
                        "repeats",
                    )
                },
            },  # fmt: skip
            "ruler": self._results["ruler"],
            "average": average,
            "perplexity": self._results["perplexity"],
            "efficiency": self._results["efficiency"],
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - self._t0, 2),
        }

    def configure_optimizers(self) -> None:
        return None
