"""GGUF teachers: import to a Hugging Face directory, loading by path, and refusals (tiny files written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")  # GGUF teachers need the gguf and accelerate packages
pytest.importorskip("accelerate")
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import hydrahead_lit as hh
from hydrahead_lit.teachers import import_gguf, load_teacher, load_teacher_tokenizer, teacher_config
from hydrahead_lit.teachers.__main__ import main as teachers_cli
from tests.teachers.tiny_gguf import TEXT, tiny_bpe, tiny_llama, write_gguf


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A float32 GGUF of a known model (for exact round trips) and one with Q8_0 MLP weights."""
    d = tmp_path_factory.mktemp("gguf")
    tok = tiny_bpe()
    model = tiny_llama(tok.get_vocab_size())
    untied = tiny_llama(tok.get_vocab_size(), tied=False, seed=1)
    return {
        "source": model,
        "tokenizer": tok,
        "f32": write_gguf(d / "tiny-f32.gguf", model, tok),
        "q8": write_gguf(d / "tiny-q8.gguf", model, tok, quantized=True),
        "untied": write_gguf(d / "tiny-untied.gguf", untied, tok),
        "untied_source": untied,
    }


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok.encode(TEXT[:80]).ids])


def _gguf_model(path: Path) -> torch.nn.Module:
    """What transformers itself makes of the file: the reference the project's teacher must equal."""
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@torch.no_grad()
def test_import_writes_a_directory_equal_to_the_gguf_model(files, tmp_path):
    out = tmp_path / "teacher"
    record = import_gguf(files["q8"], out, dtype="float32")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "gguf_source.json"):
        assert (out / name).is_file(), name
    assert record["architecture"] == "llama" and record["tensor_types"]["Q8_0"] == 6
    ids = _ids(files["tokenizer"])
    expected = _gguf_model(files["q8"])(ids).logits
    assert torch.equal(load_teacher(out)(ids).logits, expected)  # the imported directory
    assert torch.equal(load_teacher(files["q8"])(ids).logits, expected)  # the .gguf path itself
    # The tokenizer: the same ids as transformers' reading of the file, and the special tokens kept.
    ref_tok = AutoTokenizer.from_pretrained(str(files["q8"].parent), gguf_file=files["q8"].name)
    tok = load_teacher_tokenizer(out)
    assert tok(TEXT).input_ids == ref_tok(TEXT).input_ids == files["tokenizer"].encode(TEXT).ids
    assert tok.decode(tok(TEXT).input_ids) == TEXT
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["bos_token_id"] == tok.bos_token_id


@torch.no_grad()
@pytest.mark.parametrize("key", ["f32", "untied"])
def test_float_gguf_round_trips_the_source_model(files, key):
    """llama.cpp's q/k row order and the tied/untied output head are undone: the source model's logits."""
    source = files["source"] if key == "f32" else files["untied_source"]
    teacher = load_teacher(files[key])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert (teacher.lm_head.weight is teacher.model.embed_tokens.weight) == (key == "f32")
    ids = _ids(files["tokenizer"])
    torch.testing.assert_close(teacher(ids).logits, source(ids).logits, rtol=0, atol=1e-5)


def test_default_dtype_is_bf16_and_the_student_converts(files, tmp_path):
    out = tmp_path / "teacher"
    assert teachers_cli(["import-gguf", str(files["f32"]), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert teacher_config(out).model_type == "llama"
    teacher = load_teacher(out, "float32")
    ids = _ids(files["tokenizer"])
    with torch.no_grad():
        student = hh.convert(teacher, hh.HeadPlan.all_fa(teacher.config))
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits, rtol=0, atol=1e-5)
        hybrid = hh.convert(teacher, hh.HeadPlan.from_fa_groups(teacher.config, {1: [0]}), calibration_ids=ids)
        assert torch.isfinite(hybrid(ids).logits).all()


def test_unsupported_architecture_is_refused_before_loading(tmp_path, capsys):
    bad = write_gguf(tmp_path / "phi.gguf", arch="phi3")
    out = tmp_path / "out"
    for call in (lambda: import_gguf(bad, out), lambda: load_teacher(bad), lambda: load_teacher_tokenizer(bad)):
        with pytest.raises(ValueError, match=r"'phi3' model .*llama, mistral, qwen2, qwen3"):
            call()
    assert teachers_cli(["import-gguf", str(bad), str(out)]) == 2
    assert "'phi3'" in capsys.readouterr().err
    assert not out.exists()


def test_bad_paths_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_teacher(tmp_path / "missing.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_teacher(fake)
    with pytest.raises(ValueError, match=r"no config.json\) or a .gguf file"):
        load_teacher(tmp_path)


def test_an_existing_destination_is_never_silently_replaced(files, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not empty|not written by import-gguf"):
            import_gguf(files["f32"], mine, dtype="float32", overwrite=overwrite)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "teacher"
    import_gguf(files["f32"], out, dtype="float32")
    with pytest.raises(ValueError, match="--overwrite"):
        import_gguf(files["f32"], out, dtype="float32")
    import_gguf(files["untied"], out, dtype="float32", overwrite=True)
    assert not json.loads((out / "config.json").read_text())["tie_word_embeddings"]
    assert not list(tmp_path.glob(".*partial"))


def test_eval_and_data_accept_a_gguf_path(files):
    from hydrahead_lit.data.prepare import load_tokenizer
    from hydrahead_lit.eval.load import load_model, max_length, read_config

    assert max_length(read_config(files["f32"])) == 256
    model, tok, kind = load_model(files["f32"])
    assert kind == "teacher" and len(tok) == files["tokenizer"].get_vocab_size()
    assert load_tokenizer(str(files["f32"]))(TEXT).input_ids == tok(TEXT).input_ids
