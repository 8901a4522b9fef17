"""Exponential moving average (EMA) of a tokenizer's weights, for evaluation and encoding.

Every optimizer step, each parameter ``θ̄`` of the average moves toward the trained
weight ``θ``: ``θ̄ ← d·θ̄ + (1 − d)·θ``, with ``d = min(decay, (1 + n) / (10 + n))`` at
the ``n``-th update — the warm-up of TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``, so the average is not dragged by the random initial weights for the
first thousands of steps. Buffers (a VQ codebook's EMA statistics, BatchNorm's running
statistics) are copied as they are. Averaged weights generalise better than the last
iterate (Polyak & Juditsky 1992); VQGAN-class tokenizers (MaskGIT, MAGVIT-v2, LlamaGen)
evaluate with EMA weights.

Where a recipe sets ``train.ema_decay``: the average is part of the checkpoint (``ema.*``
tensors in ``state.safetensors``), the run's ``model.safetensors`` holds the averaged
weights (what ``tok eval``, ``tok encode`` and ``tok decode`` use) and ``raw/`` holds the
last trained weights as a tokenizer folder of its own (``tok encode --tokenizer RUN/raw``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """The moving average of ``model``'s weights.

    :param model: the module being trained; a frozen copy of it becomes :attr:`model`.
    :param decay: the decay ``d`` in ``[0, 1)``; 0.999 averages over about the last
        thousand steps.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def decay_at(self, n: int) -> float:
        """The decay used by the ``n``-th update (0-based)."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step toward ``model``'s current weights."""
        d = self.decay_at(int(self.updates))
        mine, theirs = list(self.model.parameters()), list(model.parameters())
        torch._foreach_lerp_(mine, theirs, 1.0 - d)
        for a, b in zip(self.model.buffers(), model.buffers(), strict=True):
            a.copy_(b)
        self.updates += 1

    def train(self, mode: bool = True) -> EMA:
        super().train(mode)
        self.model.eval()  # the average is only ever evaluated
        return self
