"""Teachers from what users have: a Hugging Face model directory or a GGUF file::

    from hydrahead_lit.teachers import load_teacher, load_teacher_tokenizer
    teacher = load_teacher("SmolLM2-135M-Instruct.Q4_1.gguf", "float32")   # or a model directory

    python -m hydrahead_lit.teachers import-gguf model.gguf teachers/model   # once: a plain HF directory

Either form passes the same checks (a local path, not a HydraHead student, a supported family).
"""

from hydrahead_lit.teachers.gguf import (
    SUPPORTED_GGUF_ARCHITECTURES,
    check_gguf_architecture,
    gguf_config,
    gguf_metadata,
    is_gguf,
)
from hydrahead_lit.teachers.import_gguf import import_gguf
from hydrahead_lit.teachers.load import (
    has_tokenizer,
    load_teacher,
    load_teacher_tokenizer,
    read_model_config,
    teacher_config,
    teacher_config_dict,
    torch_dtype,
)

__all__ = [
    "SUPPORTED_GGUF_ARCHITECTURES",
    "check_gguf_architecture",
    "gguf_config",
    "gguf_metadata",
    "has_tokenizer",
    "import_gguf",
    "is_gguf",
    "load_teacher",
    "load_teacher_tokenizer",
    "read_model_config",
    "teacher_config",
    "teacher_config_dict",
    "torch_dtype",
]
