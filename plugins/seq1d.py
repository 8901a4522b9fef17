"""1D-sequence tokenizer (the ``seq1d`` architecture): an image as K tokens.

After TiTok — Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction
and Generation", https://arxiv.org/abs/2406.07550. A ViT encoder reads the
image's patches together with ``num_tokens`` learnable latent tokens; only the
latent tokens' outputs leave the encoder, so the token grid is ``(K,)``
whatever the image size. A ViT decoder reads one learnable mask token per
patch position together with the (quantized) latents and predicts the
patches.

Unlike a 2D grid, no token is tied to a place in the image: each one
can describe whatever the encoder finds worth spending bits on.

Two learned token-mixing matrices (linear maps across positions, as in
MLP-Mixer — Tolstikhin et al. 2021, https://arxiv.org/abs/2105.01601) give
the image a path into the tokens and the tokens a path into the patches that
does not wait for attention to form: each latent token enters the encoder as
its learned embedding plus a learned mixture of the patch embeddings
(``latent_mixer``, ``(k, n)``), and each mask token enters the decoder plus a
learned mixture of the embedded latents (``mask_mixer``, ``(n, k)``). Without
them the model starts on a plateau (docs/design.md, "1D tokens"): attention
starts near uniform, so every latent token reads the same average and its
output hardly depends on the image; FSQ gives every digit the same codes,
the decoder learns the mean digit, and the latents drift into FSQ's saturated
outermost level. How long training stayed there depended on floating-point
rounding (the thread count). Weights saved before the mixers existed load
with both set to zero, which is exactly the model they were trained as.

Axis legend: ``b`` batch, ``c`` channels, ``h w`` image, ``p q`` patch,
``n`` patches, ``k`` latent tokens, ``e`` width, ``d`` latent dim.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from tok import hookimpl
from tok.errors import ConfigError
from tok.models import Architecture

__all__ = ["Seq1D", "TransformerBlock"]


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention and a GELU MLP, each residual."""

    def __init__(self, *, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        """``(b, l, e)`` → ``(b, l, e)``; every position attends to every other."""
        q, k, v = rearrange(
            self.qkv(self.norm1(x)), "b l (three m e) -> three b m l e", three=3, m=self.heads
        )
        # plain softmax attention: for the short sequences of a tokenizer it is several
        # times faster on CPU than F.scaled_dot_product_attention's fused backward
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
        attended = weights @ v
        x = x + self.proj(rearrange(attended, "b m l e -> b l (m e)"))
        return x + self.mlp(self.norm2(x))


def _embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * 0.02)


def _as_size(value: int | list[int], name: str) -> tuple[int, int]:
    size = [value, value] if isinstance(value, int) else list(value)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ConfigError(f"seq1d: {name} must be a positive integer or [h, w], got {value!r}")
    return size[0], size[1]


class Seq1D(Architecture):
    """ViT encoder → ``num_tokens`` latent tokens → ViT decoder.

    :param in_channels: image channels (filled in from the data by ``tok train``).
    :param image_size: ``[h, w]`` (or one number) of the images; fixes the number
        of patch positions (filled in from the data by ``tok train``).
    :param patch_size: side of the square patches; must divide both image sides.
    :param num_tokens: K, the length of the token sequence.
    :param width: transformer width of encoder and decoder.
    :param depth: encoder blocks.
    :param decoder_depth: decoder blocks (default: ``depth``).
    :param heads: attention heads; must divide ``width``.
    :param mlp_ratio: MLP hidden width as a multiple of ``width``.
    :param latent_dim: channels per token handed to the quantizer.
    """

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """16×16 RGB images in 4×4 patches, 8 tokens, one narrow block each way: fast."""
        return {
            "in_channels": 3,
            "image_size": [16, 16],
            "patch_size": 4,
            "num_tokens": 8,
            "width": 32,
            "depth": 1,
            "heads": 2,
            "mlp_ratio": 2.0,
            "latent_dim": 4,
        }

    @classmethod
    def example_input_shape(cls) -> tuple[int, ...]:
        """A 3-channel 16×16 image (the example config's ``image_size``)."""
        return (3, 16, 16)

    supplied_args = ("in_channels", "image_size")

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | list[int] = 32,
        patch_size: int = 4,
        num_tokens: int = 32,
        width: int = 128,
        depth: int = 4,
        decoder_depth: int | None = None,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        latent_dim: int = 4,
    ) -> None:
        super().__init__()
        h, w = _as_size(image_size, "image_size")
        for name, value in (
            ("in_channels", in_channels),
            ("patch_size", patch_size),
            ("num_tokens", num_tokens),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("latent_dim", latent_dim),
        ):
            if value < 1:
                raise ConfigError(f"seq1d: {name} must be ≥ 1, got {value!r}")
        if h % patch_size or w % patch_size:
            raise ConfigError(
                f"seq1d: patch_size {patch_size} does not divide the image size {h}x{w}"
            )
        if width % heads:
            raise ConfigError(f"seq1d: heads ({heads}) must divide width ({width})")
        decoder_depth = depth if decoder_depth is None else decoder_depth
        if decoder_depth < 1 or mlp_ratio <= 0:
            raise ConfigError("seq1d: decoder_depth must be ≥ 1 and mlp_ratio > 0")
        self.in_channels, self.image_size, self.patch_size = in_channels, (h, w), patch_size
        self.num_tokens, self.width, self.depth = num_tokens, width, depth
        self.decoder_depth, self.heads, self.mlp_ratio = decoder_depth, heads, mlp_ratio
        self.latent_dim = latent_dim
        self.patches = (h // patch_size) * (w // patch_size)
        block = {"width": width, "heads": heads, "mlp_ratio": mlp_ratio}

        # encoder: patches + latent tokens -> latent tokens' outputs
        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, width)
        self.patch_pos = _embedding(1, self.patches, width)
        self.latent_tokens = _embedding(1, num_tokens, width)
        self.encoder = nn.Sequential(*(TransformerBlock(**block) for _ in range(depth)))
        self.encoder_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, latent_dim))

        # decoder: mask tokens + latents -> patches
        self.decoder_in = nn.Linear(latent_dim, width)
        self.latent_pos = _embedding(1, num_tokens, width)
        self.mask_token = _embedding(1, 1, width)
        self.mask_pos = _embedding(1, self.patches, width)
        self.decoder = nn.Sequential(*(TransformerBlock(**block) for _ in range(decoder_depth)))
        self.decoder_out = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, in_channels * patch_size * patch_size)
        )

        # token mixing: the image reaches the latents, and the latents the patches, from
        # step 0 (the module docstring); std 1/sqrt(inputs) keeps a mixture at a token's scale
        self.latent_mixer = nn.Parameter(torch.randn(num_tokens, self.patches) / self.patches**0.5)
        self.mask_mixer = nn.Parameter(torch.randn(self.patches, num_tokens) / num_tokens**0.5)

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "patch_size": self.patch_size,
            "num_tokens": self.num_tokens,
            "width": self.width,
            "depth": self.depth,
            "decoder_depth": self.decoder_depth,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "latent_dim": self.latent_dim,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # weights saved before the token mixers existed: zero mixers are that exact model
        for name in ("latent_mixer", "mask_mixer"):
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != (self.in_channels, *self.image_size):
            c, h = self.in_channels, self.image_size
            raise ConfigError(
                f"seq1d: built for {c}x{h[0]}x{h[1]} images (in_channels, image_size), "
                f"got input shape {'x'.join(str(s) for s in input_shape)}"
            )
        return (self.num_tokens,)

    def encode(self, x: Tensor) -> Tensor:
        """``(b, c, h, w)`` → ``(b, k, d)``; a ``ConfigError`` for inputs ``grid`` refuses."""
        self.grid(tuple(x.shape[1:]))
        p = self.patch_size
        patches = rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        tokens = self.patch_embed(patches) + self.patch_pos
        latents = self.latent_tokens + self.latent_mixer @ tokens  # b k e
        out = self.encoder(torch.cat([tokens, latents], dim=1))
        return self.encoder_out(out[:, self.patches :])

    def decode(self, z: Tensor) -> Tensor:
        """``(b, k, d)`` → ``(b, c, h, w)``."""
        embedded = self.decoder_in(z)  # b k e
        latents = embedded + self.latent_pos
        masks = self.mask_token + self.mask_pos + self.mask_mixer @ embedded  # b n e
        out = self.decoder(torch.cat([masks.to(latents.dtype), latents], dim=1))
        patches = self.decoder_out(out[:, : self.patches])
        p, hp = self.patch_size, self.image_size[0] // self.patch_size
        return rearrange(patches, "b (h w) (c p q) -> b c (h p) (w q)", h=hp, p=p, q=p)


@hookimpl
def register_architectures(register):
    register(Seq1D, name="seq1d", aliases=("titok",))
