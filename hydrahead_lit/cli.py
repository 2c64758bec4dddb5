"""The command line: `python main.py fit --config configs/<scale>/stage<N>.yaml` (LightningCLI).

The model and the data are chosen in the YAML by `class_path`: a stage module of `hydrahead_lit.lit`
with a `hydrahead_lit.lit.datamodule.TokenDataModule` for training, or `hydrahead_lit.eval.module.EvalModule`
(which brings its own data) for `python main.py test`. `python main.py demo` runs the bundled CPU demo.
Stages hand off weights with the model's `init_from` (weights only); `ckpt_path` resumes the same run.

Everything that can refuse a run is checked before the run writes anything: a `ckpt_path` of another
stage, teacher or plan; a corpus of another tokenizer (or a teacher without one to compare with);
sequences longer than the model's positions; an export that would be overwritten. The run's config is
written when training starts (`hydrahead_lit.lit.run_dir`). Bad options are reported in one line
naming the key; `HYDRAHEAD_TRACEBACK=1` shows the full traceback instead.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from hydrahead_lit.cli_errors import condense_parser_error, describe_error
from hydrahead_lit.lit import run_dir
from hydrahead_lit.lit.run_record import (
    SPECIAL_CKPT_PATHS,
    CheckpointMeta,
    check_checkpoint,
    read_checkpoint_meta,
    record_differences,
    refusal,
)

# Model arguments that decide which run a checkpoint belongs to: taken from the config and checked
# against the checkpoint's record, never copied from it.
IDENTITY_KEYS = ("teacher", "init_from", "head_selection", "plan", "la", "model_config", "tokenizer")
DEFAULT_CHECKPOINT_EVERY = datetime.timedelta(minutes=10)  # when a fit config configures no ModelCheckpoint
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


# ----- checks made before a run starts ------------------------------------------------------------------
def _has_tokenizer(path: str) -> bool:
    p = Path(path).expanduser()
    if p.suffix.lower() == ".gguf":  # a GGUF teacher file describes its tokenizer
        return p.is_file()
    return p.is_dir() and any((p / f).is_file() for f in _TOKENIZER_FILES)


def check_tokenizers(model: object, datamodule: object) -> None:
    """ValueError when the data module's tokenizer is not the model's (ids would mean other tokens), or when
    the model has no tokenizer to compare with."""
    source = getattr(model, "tokenizer_source", None)
    data_tok = getattr(datamodule, "tokenizer_spec", None)
    if source is None or data_tok is None:
        return
    from hydrahead_lit.data.manifest import tokenizer_fingerprint
    from hydrahead_lit.data.prepare import load_tokenizer

    if str(source) != "demo" and not _has_tokenizer(str(source)):
        raise ValueError(
            f"{source} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}), so the corpus tokenizer "
            f"({data_tok}) cannot be checked against the model's: save the teacher's tokenizer into {source} "
            "(AutoTokenizer.from_pretrained(<original model>).save_pretrained(...))"
        )
    if tokenizer_fingerprint(load_tokenizer(str(source))) != tokenizer_fingerprint(datamodule.tokenizer):
        raise ValueError(
            f"data.tokenizer ({data_tok}) is not the model's tokenizer ({source}): prepare the corpus with the "
            f"teacher's tokenizer (python data/prepare.py --tokenizer {source} ...) and set data.tokenizer to it"
        )


def check_data_fits_model(model: object, datamodule: object) -> None:
    """ValueError when training rows are longer than the model's positions or hold ids past its vocabulary."""
    seq_len = getattr(datamodule, "seq_len", None)
    config = getattr(model, "model_config_dict", None)
    if seq_len is None or config is None:
        return
    config = config.get("text_config", config)
    what = getattr(model, "tokenizer_source", None) or type(model).__name__
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0:
        raise ValueError(
            f"the model ({what}) has no max_position_embeddings in its config, so data.seq_len={seq_len} cannot be "
            "checked against its context limit; add max_position_embeddings to its config.json"
        )
    if seq_len > limit:
        raise ValueError(
            f"data.seq_len={seq_len} exceeds the model's max_position_embeddings={limit} ({what}): it was never "
            f"trained on positions past {limit} and evaluation refuses them; lower data.seq_len to <= {limit}, or "
            "extend the context: stage 3 (LongContextModule) takes model.max_position_embeddings, and for the other "
            "stages raise max_position_embeddings (and the RoPE scaling) in the teacher's config first"
        )
    vocab = config.get("vocab_size")
    tokens = getattr(datamodule, "vocab_size", None)
    if isinstance(vocab, int) and tokens is not None and tokens > vocab:
        raise ValueError(
            f"data.tokenizer has {tokens} tokens but the model ({what}) embeds only vocab_size={vocab}: ids past "
            f"{vocab - 1} would index out of the embedding; use the teacher's own tokenizer"
        )


def _resolve(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# ----- noise that does not concern the user ----------------------------------------------------------
class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")  # Lightning's advertisements for its cloud products


def quiet_libraries() -> None:
    """Silence messages of the libraries that say nothing about this run (idempotent)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    # Lightning's own pytree helper on torch >= 2.10: a deprecation inside Lightning, nothing to act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" / "Writing model shards" bars


# ----- the command line ---------------------------------------------------------------------------------
class HydraHeadParser(LightningArgumentParser):
    """Reports a bad option in one line that names the key (JSONARGPARSE_DEBUG=1: jsonargparse's report)."""

    def error(self, message: str, ex: Exception | None = None) -> None:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {condense_parser_error(message)} (options: {prog} --help)\n")
        self.exit(2)


class HydraHeadCLI(LightningCLI):
    resume: CheckpointMeta | None = None

    # ----- ckpt_path: the checkpoint's run must be this run --------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Lightning's version replaces the configured module by the checkpoint's and its arguments by the
        checkpoint's; here a checkpoint of another module is refused, the arguments that decide the run
        stay the config's (checked in `_check_resume`), and the others come from the checkpoint as before,
        with a warning naming those that the config set otherwise."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS:
            return
        self.resume = meta = read_checkpoint_meta(ckpt_path)
        hparams = dict(meta.hyper_parameters)
        hparams.pop("_instantiator", None)
        saved_class = hparams.pop("_class_path", None)
        model = self.config[sub].get("model")
        if saved_class is None or model is None or not hasattr(model, "class_path"):
            return
        if _resolve(saved_class) is not _resolve(model.class_path):
            saved = meta.record or {"stage": meta.stage or "?", "module": saved_class}
            stage = getattr(_resolve(model.class_path), "stage", model.class_path)
            diffs = record_differences(saved, {"stage": stage, "module": model.class_path})
            raise ValueError(refusal(ckpt_path, diffs or [f"module: the checkpoint is of {saved_class}, this "
                                                          f"config runs {model.class_path}"]))  # fmt: skip
        given = model.get("init_args") or {}
        changes = {k: v for k, v in hparams.items()
                   if k not in IDENTITY_KEYS and k in given and not _same(given[k], v)}  # fmt: skip
        if not changes:
            return
        replaced = ", ".join(f"model.{k}={v!r} (given {given[k]!r})" for k, v in changes.items())
        warnings.warn(
            f"resuming {ckpt_path}: the checkpoint's {replaced} apply; a resume continues the checkpoint's run "
            "(start a new run to change them)",
            stacklevel=2,
        )
        update = {sub: {"model": {"class_path": model.class_path, "init_args": changes}}}
        self.config = self.parser.parse_object(update, self.config)

    def _check_resume(self) -> None:
        if self.resume is not None and hasattr(self.model, "run_record"):
            check_checkpoint(self.resume.as_checkpoint(), self.model.run_record(), self.resume.path)

    # ----- defaults every run gets ------------------------------------------------------------------------
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

        from hydrahead_lit.lit.progress import StepProgressBar

        given = config.get("callbacks") or []
        given = [*(given if isinstance(given, list) else [given]), *callbacks]
        extra = []
        if (self.subcommand == "fit" and config.get("enable_checkpointing") is not False
                and not any(isinstance(c, ModelCheckpoint) for c in given)):  # fmt: skip
            # a long stage must not lose everything to a crash: checkpoint on a clock by default
            extra.append(ModelCheckpoint(train_time_interval=DEFAULT_CHECKPOINT_EVERY, save_last=True))
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            extra.append(StepProgressBar())
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    # ----- before each subcommand: everything that can refuse the run -------------------------------------
    def before_fit(self) -> None:
        from hydrahead_lit.callbacks.export import ExportStudent

        self._check_resume()
        check_tokenizers(self.model, self.datamodule)
        check_data_fits_model(self.model, self.datamodule)
        for callback in self.trainer.callbacks:
            if isinstance(callback, ExportStudent):
                callback.check_target(self.trainer, resuming=self.resume is not None)

    def before_validate(self) -> None:
        self._check_resume()

    def before_test(self) -> None:
        self._check_resume()

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == "test":
            name_eval_run(self.trainer, self.model)  # before anything reads the logger's directory
        guard = run_dir.RunDirGuard(self._log_dir())
        try:
            with warnings.catch_warnings():  # filters set during the run end with it
                if self.resume is not None:  # a resumed run finds its own checkpoints there, as it should
                    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                super()._run_subcommand(subcommand)
        except BaseException:
            if not run_dir.run_started() and self.trainer.is_global_zero:
                guard.undo()  # a refused run leaves the directory as it found it
            raise
        if self.trainer.is_global_zero:
            print_outputs(self.trainer, self.model)

    def _log_dir(self) -> str | None:
        logger = self.trainer.logger
        return None if logger is None else getattr(logger, "log_dir", None)


def name_eval_run(trainer: Any, model: Any) -> None:
    """TensorBoard runs of an evaluation are named after the model (not version_0, version_1, ...); a name
    already used gets a suffix (`hydrahead-2`), so two evaluations never share a run."""
    from lightning.pytorch.loggers import TensorBoardLogger

    name = getattr(model, "name", None)
    for logger in trainer.loggers:
        if name and isinstance(logger, TensorBoardLogger) and logger._version is None:
            root, version, n = Path(logger.root_dir), str(name), 1
            while (root / version).exists():
                n += 1
                version = f"{name}-{n}"
            logger._version = version  # read when the writer is created, at setup


def print_outputs(trainer: Any, model: Any) -> None:
    """Where the run's results are, printed at its end."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from hydrahead_lit.callbacks.export import ExportStudent
    from hydrahead_lit.callbacks.head_selection import HeadSelectionCallback

    found: list[tuple[str, Any]] = []
    logger = trainer.logger
    if logger is not None and getattr(logger, "log_dir", None):
        root = Path(getattr(logger, "root_dir", None) or logger.log_dir).parent
        found.append(("run directory", f"{Path(logger.log_dir)}  (tensorboard --logdir {root})"))
    callbacks = trainer.callbacks
    found += [("checkpoint", cb.last_model_path or cb.best_model_path) for cb in callbacks
              if isinstance(cb, ModelCheckpoint) and (cb.last_model_path or cb.best_model_path)]  # fmt: skip
    found += [("head selection", cb._path) for cb in callbacks
              if isinstance(cb, HeadSelectionCallback) and cb._path is not None and cb._path.exists()]  # fmt: skip
    found += [("student", cb.exported) for cb in callbacks if isinstance(cb, ExportStudent) and cb.exported]
    output_dir = getattr(model, "output_dir", None)
    if output_dir is not None and Path(output_dir).exists():
        found.append(("results", output_dir))
    if found:
        print("\n".join(f"{kind + ':':<16}{path}" for kind, path in found), flush=True)


def build_cli(args: list[str] | None = None, run: bool = True) -> HydraHeadCLI:
    quiet_libraries()
    run_dir.reset_run_started()
    return HydraHeadCLI(
        None,  # any LightningModule given by class_path (stage modules, EvalModule)
        None,  # any LightningDataModule given by class_path (or none: EvalModule has its own)
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=HydraHeadParser,
        # written when the run starts, next to (never over) another run's config: see lit/run_dir.py
        save_config_callback=run_dir.RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"enable_autolog_hparams": False},  # logged by RunConfigCallback once the run starts
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "demo":
        from hydrahead_lit.demo import main as demo_main

        demo_main(argv[1:])
        return
    try:
        build_cli(args)  # None: LightningCLI reads sys.argv itself
    except (ValueError, FileNotFoundError) as e:
        if run_dir.run_started() or os.environ.get("HYDRAHEAD_TRACEBACK"):
            raise  # a failure during the run: the traceback says where
        sys.stderr.write(f"error: {describe_error(e)}\n")
        raise SystemExit(2) from None
