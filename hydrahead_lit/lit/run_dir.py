"""What a run writes into its directory, and when: nothing before the run really starts.

Run directories are fixed per stage (the next stage names them), so a repeated or resumed run meets
the files of an earlier one. `RunConfigCallback` writes the run's `config.yaml` (and logs the
hyperparameters) only once training, validation or testing starts, after every check and the
checkpoint restore; an existing config with other content is never replaced: the new one is written
next to it as `config.1.yaml`, `config.2.yaml`, ... . `RunDirGuard` removes what a run that failed
before starting added to its directory (the TensorBoard event file Lightning opens at setup), so a
refused run leaves an earlier run's directory byte for byte as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers.utilities import _log_hyperparams
from lightning.pytorch.trainer.states import TrainerFn

CONFIG_NAME = "config.yaml"
_started = False  # whether the current command's run has started (set by RunConfigCallback)


def run_started() -> bool:
    """True once the run of the current command started training, validation or testing."""
    return _started


def reset_run_started() -> None:
    global _started
    _started = False


def free_config_path(directory: Path, text: str) -> Path | None:
    """Where to write a config with `text`: None when `config.yaml` already says exactly that, else the
    first of `config.yaml`, `config.1.yaml`, ... that does not exist."""
    path = directory / CONFIG_NAME
    if path.is_file() and path.read_text() == text:
        return None
    n = 0
    while path.exists():
        n += 1
        path = directory / f"config.{n}.yaml"
    return path


class RunConfigCallback(SaveConfigCallback):
    """`SaveConfigCallback` that writes when the run starts, never over another run's config."""

    written: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass  # too early: a check or the checkpoint restore may still refuse the run

    def _start(self, trainer: pl.Trainer) -> None:
        global _started
        _started = True
        if self.already_saved:
            return
        if trainer.is_global_zero and trainer.log_dir is not None:
            directory = Path(trainer.log_dir)
            text = self.parser.dump(self.config, skip_none=False)
            path = free_config_path(directory, text)
            if path is not None:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                self.written = path
        self.already_saved = True
        if not trainer.enable_autolog_hparams:  # the command line defers Lightning's hyperparameter logging here
            _log_hyperparams(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.VALIDATING:
            self._start(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)


def _files(directory: Path) -> set[Path]:
    if not directory.is_dir():
        return set()
    return {Path(root) / name for root, _, names in os.walk(directory) for name in names}


def _dirs(directory: Path) -> set[Path]:
    if not directory.is_dir():
        return set()
    return {directory} | {Path(root) / name for root, names, _ in os.walk(directory) for name in names}


class RunDirGuard:
    """Remembers the files of a run directory; `undo()` removes the files and folders added since."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.files = set() if self.directory is None else _files(self.directory)
        self.dirs = set() if self.directory is None else _dirs(self.directory)

    def undo(self) -> list[Path]:
        if self.directory is None:
            return []
        added = sorted(_files(self.directory) - self.files)
        for path in added:
            path.unlink(missing_ok=True)
        for folder in sorted(_dirs(self.directory) - self.dirs, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return added
