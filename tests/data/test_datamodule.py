from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from hydrahead_lit.data.demo import write_demo_corpus
from hydrahead_lit.data.haystack import Haystack
from hydrahead_lit.data.prepare import prepare_corpus
from hydrahead_lit.data.synthetic import make_sample
from hydrahead_lit.lit.datamodule import TokenDataModule

SEQ = 256  # long enough for every synthetic task with the demo tokenizer


def _corpora(root, tok, seeds: tuple[int, ...], n_docs: int) -> list[str]:
    """One prepared demo corpus per seed under `root`."""
    out = []
    for seed in seeds:
        src = write_demo_corpus(root / f"src{seed}", n_docs=n_docs, seed=seed)
        out.append(str(root / f"corpus{seed}"))
        prepare_corpus([str(p) for p in src], out[-1], tok, SEQ, chunk_blocks=4)
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, demo_tok):
    return _corpora(tmp_path_factory.mktemp("dm"), demo_tok, (0, 1), n_docs=400)


class _Recorder(LightningModule):
    """Records every batch it trains on; the loss is a dummy with a zero learning rate."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append({k: v.clone() for k, v in batch.items()})
        return self.w.sum() * 0 + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm_kwargs: dict, root, steps: int, ckpt_path=None) -> list[dict[str, torch.Tensor]]:
    model = _Recorder()
    ckpt = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ckpt], default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, datamodule=TokenDataModule(**dm_kwargs), ckpt_path=ckpt_path)
    return model.seen


@pytest.fixture(scope="module")
def small_dirs(tmp_path_factory, demo_tok):
    """Two corpora of ~7 batches of 4 rows each, so that short runs cross epochs."""
    return _corpora(tmp_path_factory.mktemp("small"), demo_tok, (2, 3), n_docs=60)


@pytest.mark.parametrize(
    "n_dirs, num_workers",
    [(1, 0), (1, 2), (2, 0), (2, 2)],
    ids=["one-dir-inline", "one-dir-2-workers", "mixture-inline", "mixture-2-workers"],
)
def test_resume_sees_the_same_batches(small_dirs, tmp_path, n_dirs, num_workers):
    kwargs = dict(
        data_dirs=small_dirs[:n_dirs], tokenizer="demo", seq_len=SEQ, batch_size=4, num_workers=num_workers,
        weights=[0.7, 0.3] if n_dirs == 2 else None, synthetic_fraction=0.25, seed=3,
    )  # fmt: skip
    steps = 20  # about 3 epochs for one directory, 2 for the mixture
    full = _fit(kwargs, tmp_path / "a", steps=steps)
    assert len(full) == steps
    epoch_len = TokenDataModule(**kwargs).train_dataloader().__len__()
    assert epoch_len < 10, "the run must cross an epoch boundary after each checkpoint"
    # Mid first epoch, at the end of the first epoch, and within the second one.
    for start in (3, epoch_len, epoch_len + 2):
        resumed = _fit(kwargs, tmp_path / f"b{start}", steps=steps, ckpt_path=tmp_path / "a" / f"step={start}.ckpt")
        assert len(resumed) == steps - start
        for want, got in zip(full[start:], resumed):
            assert torch.equal(want["input_ids"], got["input_ids"])
            assert torch.equal(want["loss_mask"], got["loss_mask"])
        # Not trivially equal: the resumed run did not restart from the first batch.
        assert not torch.equal(full[0]["input_ids"], resumed[0]["input_ids"])


def _rows(dm: TokenDataModule, n_batches: int) -> list[dict[str, torch.Tensor]]:
    dm.setup("fit")
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == n_batches:
            break
        assert batch["input_ids"].shape == (dm.batch_size, SEQ + 1) and batch["input_ids"].dtype == torch.long
        assert batch["loss_mask"].shape == batch["input_ids"].shape and batch["loss_mask"].dtype == torch.bool
        out += [{k: v[j] for k, v in batch.items()} for j in range(dm.batch_size)]
    return out


def _is_synthetic(tok, ids: torch.Tensor) -> bool:
    text = tok.decode(ids)
    return any(s in text for s in ("special magic", "pass key", "VAR ", "Memorize the number"))


def test_mixture_weights_and_synthetic_fraction(dirs, demo_tok):
    own = []
    for d in dirs:  # every corpus row of each directory, to tell the sources apart
        rows = _rows(TokenDataModule(d, seq_len=SEQ, batch_size=1, shuffle=False), 10_000)
        own.append({tuple(r["input_ids"].tolist()) for r in rows})
    assert not own[0] & own[1]
    dm = TokenDataModule(dirs, seq_len=SEQ, batch_size=8, weights=[3.0, 1.0], synthetic_fraction=0.2, seed=1)
    rows = _rows(dm, 25)
    synthetic = [r for r in rows if _is_synthetic(demo_tok, r["input_ids"])]
    corpus = [tuple(r["input_ids"].tolist()) for r in rows if not _is_synthetic(demo_tok, r["input_ids"])]
    # 200 rows: binomial std of the fraction is ~0.03, so 0.1..0.3 is a > 3-sigma band.
    assert 0.1 < len(synthetic) / len(rows) < 0.3
    assert all(r in own[0] or r in own[1] for r in corpus)
    share0 = sum(r in own[0] for r in corpus) / len(corpus)
    assert 0.6 < share0 < 0.9  # weight 3:1 -> 0.75; ~160 rows, std ~0.035
    assert all(bool(r["loss_mask"].all()) for r in rows)


def test_synthetic_answer_loss_mask(dirs, demo_tok):
    dm = TokenDataModule(dirs[0], seq_len=SEQ, batch_size=4, synthetic_fraction=1.0, synthetic_loss="answer")
    rows = _rows(dm, 2)
    assert all(_is_synthetic(demo_tok, r["input_ids"]) for r in rows)
    for r in rows:
        idx = r["loss_mask"].nonzero().flatten()
        assert 0 < len(idx) < 60 and idx.max() == SEQ  # the answer closes the row
        answer = demo_tok.decode(r["input_ids"][idx])
        assert any(ch.isdigit() or ch.isupper() for ch in answer)


def test_corpus_haystack_uses_the_corpus(dirs, demo_tok, gpt2_like_tok):
    hay = Haystack.from_corpus(dirs[0])
    s = make_sample("niah_multikey", demo_tok, 700, seed=4, haystack=hay)
    assert len(s.full_ids) == 700
    assert s.input_ids[s.answer_source_positions[0]] == s.answer_ids[0]
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        make_sample("passkey", gpt2_like_tok, 700, seed=4, haystack=Haystack.from_corpus(dirs[0]))


def test_setup_errors_are_clear(dirs, tmp_path):
    other = tmp_path / "tok"
    with pytest.raises(ValueError, match="not a local directory"):
        TokenDataModule(dirs[0], tokenizer=str(other)).setup("fit")
    with pytest.raises(ValueError, match="is not a prepared corpus"):
        TokenDataModule(str(tmp_path), seq_len=SEQ).setup("fit")
    with pytest.raises(ValueError, match="synthetic task 'niah_multiquery' does not fit seq_len=64"):
        TokenDataModule(dirs[0], seq_len=64, synthetic_fraction=0.1, synthetic_tasks=["niah_multiquery"]).setup("fit")
    with pytest.raises(ValueError, match="weights"):
        TokenDataModule(dirs, weights=[1.0])
    with pytest.raises(ValueError, match="synthetic_tasks"):
        TokenDataModule(dirs[0], seq_len=SEQ, synthetic_tasks=["qa"]).train_dataloader()


def test_tokenizer_mismatch_names_directory(dirs, gpt2_like_tok, tmp_path):
    gpt2_like_tok.save_pretrained(str(tmp_path / "tok"))
    with pytest.raises(ValueError, match=f"tokenizer mismatch for {dirs[0]}"):
        TokenDataModule(dirs[0], tokenizer=str(tmp_path / "tok"), seq_len=SEQ).setup("fit")


def test_truncated_chunk_fails_setup(dirs, demo_tok, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dirs[1], copy)
    chunk = copy / json.loads((copy / "index.json").read_text())["chunks"][0]["filename"]
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"chunk {chunk} is corrupt"):
        TokenDataModule(str(copy), seq_len=SEQ).setup("fit")


def test_configurable_from_lightning_cli(dirs):
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        _Recorder, TokenDataModule, run=False,
        args=["--data.data_dirs", json.dumps(dirs), "--data.weights", "[2, 1]", "--data.seq_len", str(SEQ),
              "--data.synthetic_fraction", "0.1", "--trainer.logger", "false"],
    )  # fmt: skip
    assert cli.datamodule.data_dirs == dirs and cli.datamodule.weights == [2.0, 1.0]
    assert cli.datamodule.vocab_size == 1024


def test_mixture_epoch_has_only_full_batches(dirs):
    dm = TokenDataModule(dirs, seq_len=SEQ, batch_size=16, weights=[1.0, 1.0])
    rows = _rows(dm, 10**6)  # the whole epoch; _rows checks every batch shape
    assert len(rows) % 16 == 0 and len(rows) > 16
