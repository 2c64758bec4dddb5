"""The manifest of a prepared corpus directory, and tokenizer fingerprints to validate it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MANIFEST_NAME = "hydrahead_manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a prepared directory holds and how it was made (``hydrahead_manifest.json``)."""

    seq_len: int
    chunk_blocks: int
    num_tokens: int
    num_documents: int
    num_chunks: int
    num_blocks: int
    dtype: str
    tokenizer_name: str
    tokenizer_fingerprint: str
    vocab_size: int
    eos_token_id: int
    text_field: str
    source_files: list[str] = field(default_factory=list)
    chunk_sha256: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def block_size(self) -> int:
        """Tokens per training row: ``seq_len + 1`` (inputs and shifted targets)."""
        return self.seq_len + 1

    @property
    def chunk_tokens(self) -> int:
        return self.chunk_blocks * self.block_size

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read the manifest of ``directory``; ValueError if it is missing or malformed."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ValueError(
                f"{directory} is not a prepared corpus (no {MANIFEST_NAME}); "
                "create it with `python data/prepare.py --output <dir> ...`"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"corrupt manifest {path}: {e}; prepare the corpus again") from e


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 (16 hex digits) of the vocabulary (token -> id, added tokens included) and the EOS id.

    Two tokenizers with the same fingerprint map every token string to the same id, which is
    what a prepared corpus depends on.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    payload = json.dumps({"vocab": vocab, "eos": tokenizer.eos_token_id}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def validate(manifest: Manifest, tokenizer, directory: str | Path | None = None) -> None:
    """Raise ValueError (naming ``directory``) if ``manifest`` was not made with ``tokenizer``."""
    where = directory if directory is not None else "the prepared corpus"
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has manifest format {manifest.format_version}, expected {FORMAT_VERSION}; prepare it again"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != manifest.tokenizer_fingerprint:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer mismatch for {where}: it was prepared with {manifest.tokenizer_name!r} "
            f"(fingerprint {manifest.tokenizer_fingerprint}, vocab {manifest.vocab_size}) but the given "
            f"tokenizer {name!r} has fingerprint {fingerprint} (vocab {len(tokenizer)}); prepare the corpus "
            "with the teacher's tokenizer or point to the matching tokenizer"
        )
