"""Multi-group vector quantization (MGVQ).

"MGVQ: Could VQ-VAE Beat VAE? A Generalizable Tokenizer with Multi-group
Quantization", 2025. https://arxiv.org/abs/2507.07997

The ``d`` latent channels are split into ``groups`` contiguous groups of
``d / groups`` channels; each group is quantized by its own VQ
(:class:`tok.plugins.vq.VQ`) with its own codebook and is one token stream, so
a position carries ``groups`` indices and the representable set grows as
``codebook_size ** groups`` while each codebook stays small. Group ``g`` holds
channels ``[g * d / groups, (g + 1) * d / groups)`` and index stream ``g``.

- ``quantized`` is the groups' codes concatenated along the channels;
  :meth:`MultiGroupVQ.indices_to_codes` concatenates the same codes, so the round
  trip is exact.
- ``shared_codebook = true``: one VQ module (one codebook, one set of EMA
  statistics) quantizes every group in a single call, so the EMA statistics
  pool the vectors of all groups.
- ``aux_loss`` is the mean of the groups' aux losses — with equal group sizes
  that is the commitment loss over all ``d`` channels, the same scale as a
  plain VQ and the same with or without a shared codebook.
- ``metrics``: ``usage`` and ``perplexity`` averaged over the streams.

(The paper's nested-masking training of the groups is a training-loop
matter, not part of the quantizer.)

Axis legend: ``b`` batch, ``...`` grid axes, ``d`` latent channels, ``g``
groups (streams), ``e`` channels per group (``d / groups``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tok import Quantizer, QuantizerOutput, hookimpl
from tok.errors import ConfigError
from tok.metrics import batch_code_metrics
from tok.plugins.vq import VQ
from tok.quantizer import nonfinite_positions

__all__ = ["MultiGroupVQ"]


class MultiGroupVQ(Quantizer):
    """``groups`` VQs side by side, each over ``dim / groups`` channels.

    :param dim: latent channels of the input; divisible by ``groups``.
    :param codebook_size: codes per group.
    :param groups: number of groups (index streams), at least 1.
    :param shared_codebook: one codebook for every group (EMA statistics pooled).
    :param codebook_dim: code-space channels of each group; when it differs from
        ``dim / groups`` each group has a projection in and out.
    :param decay, eps, commitment_weight, ema, codebook_weight, kmeans_init,
        kmeans_iters, restart_after, cosine: passed to each group's
        :class:`tok.plugins.vq.VQ` (see there).

    Quantization runs in float32, also under bf16 autocast, so bf16 gives the
    same indices as float32.
    """

    paper = "https://arxiv.org/abs/2507.07997"

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        groups: int = 4,
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
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ConfigError(f"MultiGroupVQ groups must be an integer >= 1, got {groups!r}")
        if not isinstance(shared_codebook, bool):
            raise ConfigError(
                f"MultiGroupVQ shared_codebook must be true or false, got {shared_codebook!r}"
            )
        if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
            raise ConfigError(
                f"MultiGroupVQ codebook_size must be an integer >= 1, got {codebook_size!r}"
            )
        super().__init__(dim=dim, codebook_sizes=(codebook_size,) * groups)
        if dim % groups:
            raise ConfigError(
                f"MultiGroupVQ dim {dim} is not divisible by groups {groups}: "
                f"each group needs dim / groups channels"
            )
        self.codebook_size = codebook_size
        self.groups = groups
        self.group_dim = dim // groups
        self.shared_codebook = shared_codebook
        self.vq_config = {
            "dim": self.group_dim,
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
        self.vqs = nn.ModuleList(
            VQ(**self.vq_config) for _ in range(1 if shared_codebook else groups)
        )
        # the VQ normalises its options (codebook_dim None → dim / groups, restart_after None → 0)
        self.vq_config = {k: v for k, v in self.vqs[0].config().items() if k in self.vq_config}

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """Three groups of 4 channels, 16 codes each in a 2-channel code space, k-means init."""
        return {
            "dim": 12,
            "codebook_size": 16,
            "groups": 3,
            "codebook_dim": 2,
            "kmeans_init": True,
            "kmeans_iters": 2,
            "restart_after": 2,
        }

    def config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in self.vq_config.items() if k != "dim"}
        return {
            "dim": self.dim,
            **cfg,
            "groups": self.groups,
            "shared_codebook": self.shared_codebook,
        }

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z: (b, ..., d)``; returns float32 codes and ``(b, ..., groups)`` indices."""
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = z.float()
            if self.shared_codebook:
                out = self.vqs[0](x.unflatten(-1, (self.groups, self.group_dim)))  # b ... g e
                quantized = out.quantized.flatten(-2)  # b ... d
                indices = out.indices.squeeze(-1)  # b ... g
                aux = out.aux_loss
                metrics = batch_code_metrics(
                    indices, self.codebook_sizes, nonfinite=nonfinite_positions(x)
                )
            else:
                outs = [
                    vq(part) for vq, part in zip(self.vqs, x.chunk(self.groups, -1), strict=True)
                ]
                quantized = torch.cat([o.quantized for o in outs], dim=-1)  # b ... d
                indices = torch.cat([o.indices for o in outs], dim=-1)  # b ... g
                aux = torch.stack([o.aux_loss for o in outs]).mean()
                metrics = {
                    key: torch.stack([o.metrics[key] for o in outs]).mean().detach()
                    for key in ("usage", "perplexity")
                }
            # positions the groups gave a NaN: the input's, and any projection's overflow
            metrics["nonfinite"] = nonfinite_positions(quantized).sum().float()
        return QuantizerOutput(quantized=quantized, indices=indices, aux_loss=aux, metrics=metrics)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(b, ..., groups)`` indices → ``(b, ..., d)``: the groups' codes side by side."""
        indices = self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            if self.shared_codebook:
                codes = self.vqs[0].indices_to_codes(indices.unsqueeze(-1))  # b ... g e
                return codes.flatten(-2)
            return torch.cat(
                [vq.indices_to_codes(indices[..., g : g + 1]) for g, vq in enumerate(self.vqs)],
                dim=-1,
            )


@hookimpl
def register_quantizers(register):
    register(MultiGroupVQ, name="mgvq")
