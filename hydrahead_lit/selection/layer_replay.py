"""Run a model's forward from layer `l` on; the layers before it replay what they computed in an earlier pass.

Activation patching changes one layer at a time, so every layer below it computes exactly what it did in the
unpatched pass. `LayerInputs` records each decoder layer's input during that pass; `replay_from(l)` then
stands in for layers 0 .. l-1 (layer l-1 returns the recorded input of layer l, the ones below return their
input unchanged), so a patched forward at layer l costs L - l layers instead of L. Embedding, rotary and mask
are still computed by the model (cheap), so the model's own forward runs unchanged around the stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from hydrahead_lit.modeling.arch import decoder_layers


class _PassThrough(nn.Module):
    """A decoder layer that returns its input: the layer above it replays the recorded activations."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


class _Replay(nn.Module):
    """A decoder layer that returns a recorded output (repeated along the batch to `blocks` copies)."""

    def __init__(self, output: Tensor, blocks: int) -> None:
        super().__init__()
        self.output, self.blocks = output, blocks

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        out = self.output if self.blocks == 1 else self.output.repeat(self.blocks, *([1] * (self.output.dim() - 1)))
        if out.shape != hidden_states.shape:
            raise ValueError(
                f"recorded activations {tuple(out.shape)} do not fit this forward's {tuple(hidden_states.shape)}: "
                "replay the same probe batch that was recorded"
            )
        return out


def can_replay(model: nn.Module) -> bool:
    """Whether layers can be stood in for: not when they are sharded (FSDP2 gathers parameters per layer
    in hooks every rank must run; the plain forward is used there)."""
    return not any(hasattr(p, "to_local") for p in model.parameters())


class LayerInputs:
    """The input hidden states of every decoder layer in one forward (kept on the model's device)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.inputs: dict[int, Tensor] = {}

    @contextmanager
    def record(self) -> Iterator[LayerInputs]:
        def hook(index: int):
            def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                h = args[0] if args else kwargs["hidden_states"]
                self.inputs.setdefault(index, h.detach())

            return pre

        handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True)
                   for i, layer in enumerate(decoder_layers(self.model))]  # fmt: skip
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def replay_from(self, layer: int, blocks: int = 1) -> Iterator[None]:
        """Within the block, a forward starts computing at `layer` (the batch `blocks` copies of the recorded one)."""
        layers = decoder_layers(self.model)
        if not 0 < layer < len(layers):
            raise ValueError(
                f"replay starts at a layer in 1..{len(layers) - 1}, got {layer} (for layer 0 run the plain forward)"
            )
        if layer not in self.inputs:
            raise ValueError(f"no recorded input of layer {layer}: run the forward inside record() first")
        saved = [layers[i] for i in range(layer)]
        try:
            for i in range(layer - 1):
                layers[i] = _PassThrough()
            layers[layer - 1] = _Replay(self.inputs[layer], blocks)
            yield
        finally:
            for i, module in enumerate(saved):
                layers[i] = module
