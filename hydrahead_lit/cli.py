"""The command line: `python main.py fit --config configs/<scale>/stage<N>.yaml` (LightningCLI).

The model and the data are chosen in the YAML by `class_path`: a stage module of `hydrahead_lit.lit`
with a `hydrahead_lit.lit.datamodule.TokenDataModule` for training, or `hydrahead_lit.eval.module.EvalModule`
(which brings its own data) for `python main.py test`. `python main.py demo` runs the bundled CPU demo.
Stages hand off weights with the model's `init_from` (weights only); `ckpt_path` resumes the same stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI


def _tokenizer_files(path: str | None) -> bool:
    if path is None:
        return False
    return any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def check_tokenizers(model: object, datamodule: object) -> None:
    """ValueError when the data module's tokenizer is not the teacher's (ids would mean other tokens)."""
    source = getattr(model, "tokenizer_source", None)
    data_tok = getattr(datamodule, "tokenizer_spec", None)
    if source is None or data_tok is None or (source != "demo" and not _tokenizer_files(source)):
        return
    from hydrahead_lit.data.manifest import tokenizer_fingerprint
    from hydrahead_lit.data.prepare import load_tokenizer

    if tokenizer_fingerprint(load_tokenizer(source)) != tokenizer_fingerprint(datamodule.tokenizer):
        raise ValueError(
            f"data.tokenizer ({data_tok}) is not the model's tokenizer ({source}): prepare the corpus with the "
            f"teacher's tokenizer (python data/prepare.py --tokenizer {source} ...) and set data.tokenizer to it"
        )


class HydraHeadCLI(LightningCLI):
    def before_fit(self) -> None:
        check_tokenizers(self.model, self.datamodule)


def build_cli(args: list[str] | None = None, run: bool = True) -> HydraHeadCLI:
    return HydraHeadCLI(
        None,  # any LightningModule given by class_path (stage modules, EvalModule)
        None,  # any LightningDataModule given by class_path (or none: EvalModule has its own)
        subclass_mode_model=True,
        subclass_mode_data=True,
        # Run directories are fixed per stage (the next stage names them), so a resumed or repeated run
        # rewrites its config.yaml; checkpoints get versioned names and ExportStudent refuses to overwrite.
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "demo":
        from hydrahead_lit.demo import main as demo_main

        demo_main(argv[1:])
        return
    build_cli(args)  # None: LightningCLI reads sys.argv itself
