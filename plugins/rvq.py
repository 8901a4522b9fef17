"""Residual vector quantization (RVQ).

Zeghidour, Luebs, Omran, Skoglund, Tagliasacchi: "SoundStream: An End-to-End
Neural Audio Codec", 2021. https://arxiv.org/abs/2107.03312 (Algorithm 1).

``depth`` VQ levels (:class:`tok.plugins.vq.VQ`), each quantizing what the
levels before it left over: level 0 quantizes ``z``, level ``i`` the residual
``r_i = r_{i-1} - q_{i-1}``. The output is the sum of the levels' codes and
each level is one token stream, so a position carries ``depth`` indices, coarse
to fine.

- ``quantized = q_0 + q_1 + … + q_{depth-1}``, summed left to right in float32;
  :meth:`ResidualVQ.indices_to_codes` sums the same codes in the same order, so
  the round trip is exact (``torch.equal``).
- Gradients: each level is straight-through and the residual passed on is
  ``r_i - sg[q_i]``, so every level's commitment loss reaches ``z`` (as in
  vector-quantize-pytorch's ``ResidualVQ`` with ``quant_grad_frac = 0``); the
  gradient of ``quantized`` w.r.t. ``z`` is ``depth`` times the identity (without
  projections).
- ``aux_loss`` is the sum of the levels' aux losses (commitment, plus the
  codebook loss without EMA); ``metrics`` are the levels' ``usage`` and
  ``perplexity`` averaged over levels.
- ``shared_codebook = true``: one VQ module is applied at every level (one
  set of parameters and buffers). In train mode it updates its EMA statistics
  once per level, in level order, so a training step moves the shared codebook
  ``depth`` times.
- k-means initialisation (``kmeans_init``): a level gathers vectors only once
  the levels before it are initialised (:meth:`tok.plugins.vq.VQ.kmeans_paused`),
  so no codebook is fitted to residuals of a random one; a shared codebook
  gathers the first level's inputs only.

Axis legend: ``b`` batch, ``...`` grid axes, ``d`` latent channels, ``q`` levels
(streams).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.plugins.vq import VQ
from tok.quantizer import nonfinite_positions

__all__ = ["ResidualVQ"]


class ResidualVQ(Quantizer):
    """``depth`` VQ levels, each quantizing the residual of the levels before it.

    :param dim: latent channels of the input.
    :param codebook_size: codes per level.
    :param depth: number of levels (index streams), at least 1.
    :param shared_codebook: one codebook (one VQ module) for every level.
    :param codebook_dim: code-space channels of each level; when it differs from
        ``dim`` each level has its own projection in and out.
    :param decay, eps, commitment_weight, ema, codebook_weight, kmeans_init,
        kmeans_iters, restart_after, cosine: passed to every level's
        :class:`tok.plugins.vq.VQ` (see there).

    Quantization runs in float32, also under bf16 autocast, so bf16 gives the
    same indices as float32.
    """

    paper = "https://arxiv.org/abs/2107.03312"

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        depth: int = 4,
        shared_codebook: bool = False,
        codebook_dim: int | None = None,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 0.25,
        ema: bool = True,
        codebook_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_after: int | None = None,
        cosine: bool = False,
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"ResidualVQ depth must be an integer >= 1, got {depth!r}")
        if not isinstance(shared_codebook, bool):
            raise ConfigError(
                f"ResidualVQ shared_codebook must be true or false, got {shared_codebook!r}"
            )
        if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
            raise ConfigError(
                f"ResidualVQ codebook_size must be an integer >= 1, got {codebook_size!r}"
            )
        super().__init__(dim=dim, codebook_sizes=(codebook_size,) * depth)
        self.codebook_size = codebook_size
        self.depth = depth
        self.shared_codebook = shared_codebook
        self.vq_config = {
            "dim": dim,
            "codebook_size": codebook_size,
            "codebook_dim": codebook_dim,
            "decay": decay,
            "eps": eps,
            "commitment_weight": commitment_weight,
            "ema": ema,
            "codebook_weight": codebook_weight,
            "kmeans_init": kmeans_init,
            "kmeans_iters": kmeans_iters,
            "restart_after": restart_after,
            "cosine": cosine,
        }
        self.levels = nn.ModuleList(
            VQ(**self.vq_config) for _ in range(1 if shared_codebook else depth)
        )
        # the VQ normalises its options (codebook_dim None → dim, restart_after None → 0)
        self.vq_config = {k: v for k, v in self.levels[0].config().items() if k in self.vq_config}

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Three levels of 16 codes behind a projection, k-means init and restart."""
        return {
            "dim": 8,
            "codebook_size": 16,
            "depth": 3,
            "codebook_dim": 4,
            "kmeans_init": True,
            "kmeans_iters": 2,
            "restart_after": 2,
        }

    def config(self) -> dict[str, Any]:
        return {
            **self.vq_config,
            "depth": self.depth,
            "shared_codebook": self.shared_codebook,
        }

    def level(self, i: int) -> VQ:
        """The VQ module of level ``i`` (the same module for every level when shared)."""
        return self.levels[0 if self.shared_codebook else i]

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns float32 codes and ``(b, ..., depth)`` indices."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            residual = z.float()
            quantized = aux = None
            indices, usage, perplexity = [], [], []
            ready = True  # whether the levels so far have their k-means initialisation
            for i in range(self.depth):
                level = self.level(i)
                # a level learns its k-means codebook only from residuals of initialised levels
                with contextlib.nullcontext() if ready else level.kmeans_paused():
                    out = level(residual)  # b ... d, b ... 1
                ready = ready and bool(level.initted)
                # the same left-to-right order as indices_to_codes: bit-identical sums
                quantized = out.quantized if quantized is None else quantized + out.quantized
                aux = out.aux_loss if aux is None else aux + out.aux_loss
                if i + 1 < self.depth:
                    residual = residual - out.quantized.detach()
                indices.append(out.indices)
                usage.append(out.metrics["usage"])
                perplexity.append(out.metrics["perplexity"])
        return QuantizerOutput(
            quantized=quantized,
            indices=torch.cat(indices, dim=-1),  # b ... q
            aux_loss=aux,
            metrics={
                "usage": torch.stack(usage).mean().detach(),
                "perplexity": torch.stack(perplexity).mean().detach(),
                # positions the levels gave a NaN: the input's, and any level's overflow
                "nonfinite": nonfinite_positions(quantized).sum().float(),
            },
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., depth)`` indices → ``(b, ..., d)``: the sum of every level's code."""
        indices = self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = None
            for i in range(self.depth):
                level_codes = self.level(i).indices_to_codes(indices[..., i : i + 1])
                codes = level_codes if codes is None else codes + level_codes
        return codes


@hookimpl
def register_quantizers(register):
    register(ResidualVQ, name="rvq")
