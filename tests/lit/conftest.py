from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

VOCAB = 128
SEQ = 16


def tiny_teacher():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen3ForCausalLM(cfg).eval()


class RandomTokens(Dataset):
    """Deterministic random rows in the TokenDataModule batch format."""

    def __init__(self, n: int = 64, seq_len: int = SEQ, vocab: int = VOCAB) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, vocab, (n, seq_len + 1), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "loss_mask": torch.ones(self.ids.shape[1], dtype=torch.bool)}


def loader(batch_size: int = 2) -> DataLoader:
    return DataLoader(RandomTokens(), batch_size=batch_size)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    tiny_teacher().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def twin_dir(tmp_path_factory, teacher_dir) -> Path:
    from transformers import AutoModelForCausalLM

    import hydrahead_lit as hh

    path = tmp_path_factory.mktemp("twin")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, local_files_only=True)
    hh.convert(teacher, None, twins=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory, twin_dir) -> Path:
    import hydrahead_lit as hh

    path = tmp_path_factory.mktemp("student")
    twin = hh.load_student(twin_dir)
    plan = hh.HeadPlan.from_fa_groups(twin.config, {0: [1]})
    hh.convert(twin, plan).save_pretrained(path)
    return path
