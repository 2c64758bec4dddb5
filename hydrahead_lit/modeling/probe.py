"""`AttentionProbe`: what one forward pass asks of the HybridAttention layers, and what they return.

Stage 1 needs each twin layer's (teacher head outputs, LA twin outputs); head selection needs softmax
attention rows of the FA heads and activation patching (FA outputs replaced by the twins'). These travel
in an explicit object passed with the forward, `model(..., attention_probe=probe)`, which `transformers`
hands down to every attention module. The layers read the requests and write their records into the
probe, never onto themselves, so nothing outlives the forward unless the caller keeps the probe.

One probe serves one forward. Each layer records once and the first record stands: a forward recomputed
under activation checkpointing (the same call replayed in the backward pass) adds and replaces nothing,
and the requests are read-only, so a recompute computes exactly what the forward did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor


class AttentionProbe:
    """Requests (`alignment`, `rows`, `patch`) and records (`alignments`, `attention`), keyed by layer.

    - `alignment`: twin layers record (teacher head outputs, detached; LA twin outputs), each [B, T, H, D].
    - `rows`: query positions [R] whose FA softmax attention rows to record, [B, H_fa, R, T] per layer.
    - `patch`: {layer: heads} whose FA outputs are replaced by their LA twins' (twin layers only).
    - `patch_blocks`: {layer: [heads of block 0, heads of block 1, ...]}: the batch is that many equal blocks
      of rows, and block k has its own heads patched. Activation patching scores several KV groups of one
      layer in one forward this way, each on its own copy of the probes. `patch={l: heads}` is the case of
      one block, `patch_blocks={l: [heads]}`, and is stored so.

    A plain class on purpose, not a dataclass: FSDP2 rebuilds dataclass arguments of a forward (to cast
    or move their tensors), so the layers would record into a copy the caller never sees.
    """

    def __init__(
        self,
        alignment: bool = False,
        rows: Tensor | None = None,
        patch: Mapping[int, Sequence[int]] | None = None,
        patch_blocks: Mapping[int, Sequence[Sequence[int]]] | None = None,
    ) -> None:
        if rows is not None and (rows.dim() != 1 or rows.is_floating_point()):
            raise ValueError(f"probe rows must be a 1-D tensor of positions, got shape {tuple(rows.shape)}")
        self.alignment = bool(alignment)
        self.rows = rows
        patch, patch_blocks = patch or {}, patch_blocks or {}
        if both := sorted(set(map(int, patch)) & set(map(int, patch_blocks))):
            raise ValueError(f"layer(s) {both} in both patch and patch_blocks: give each layer one of them")
        blocks = {**{layer: [heads] for layer, heads in patch.items()}, **patch_blocks}
        self.patch_blocks = {
            int(layer): [[int(h) for h in heads] for heads in layer_blocks] for layer, layer_blocks in blocks.items()
        }
        self.alignments: dict[int, tuple[Tensor, Tensor]] = {}
        self.attention: dict[int, Tensor] = {}

    def __repr__(self) -> str:
        rows = None if self.rows is None else self.rows.numel()
        return (
            f"AttentionProbe(alignment={self.alignment}, rows={rows}, patch_blocks={self.patch_blocks}, "
            f"recorded alignments={sorted(self.alignments)}, attention={sorted(self.attention)})"
        )

    def patched_blocks(self, layer: int) -> list[list[int]]:
        """The heads to patch in each block of rows of `layer` (empty: the layer is not patched)."""
        blocks = self.patch_blocks.get(layer, [])
        return blocks if any(blocks) else []

    def patches(self, layer: int) -> bool:
        return bool(self.patched_blocks(layer))

    def needs_twins(self, layer: int) -> bool:
        """Whether a twin layer must run its LA twins in this forward (their output is otherwise unused)."""
        return self.alignment or self.patches(layer)

    def record_alignment(self, layer: int, fa: Tensor, la: Tensor) -> None:
        self.alignments.setdefault(layer, (fa, la))

    def record_attention(self, layer: int, probs: Tensor) -> None:
        self.attention.setdefault(layer, probs)

    def alignment_pairs(self, num_layers: int) -> list[tuple[Tensor, Tensor]]:
        """(fa, la) of layers 0 .. num_layers - 1, in order; an error if a layer recorded none."""
        missing = [i for i in range(num_layers) if i not in self.alignments]
        if missing:
            raise ValueError(
                f"no alignment pair from layer(s) {missing}: only the layers of a stage-1 twin model "
                "(hh.convert(teacher, None, twins=True)) record one, in a forward given this probe with alignment=True"
            )
        return [self.alignments[i] for i in range(num_layers)]
