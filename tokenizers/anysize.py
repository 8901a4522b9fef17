"""Images and videos of any size: padding to the stride, tiled images, windowed videos.

A convolutional tokenizer takes any input whose sides are multiples of its stride
``f`` (``conv``: ``patch_size · 2 ** (len(channels) - 1)``; ``causal3d``: its
``spatial_factor``, and ``1 + temporal_factor · k`` frames). This module brings every
other size there and back, and splits inputs too large for memory:

- **Padding** (:func:`pad_to_stride`): each spatial side is padded at its end (bottom,
  right) to the next multiple of ``f`` by *replicating* the last row/column, and a video
  at its end by repeating its last frame up to ``1 + temporal_factor · k`` frames. Padding
  at the end keeps the tokens of the image's top-left aligned with an unpadded encode
  (and with the tiles below); replicate rather than reflect because reflect mirrors
  content into the border (a second copy of an edge a few pixels in, which the encoder
  spends tokens on) and fails for pads as large as the side, while replicate works
  for every size and adds no new structure. Cosmos-Tokenizer (``pad_video_batch``,
  ``cosmos_tokenizer/utils.py``) replicates frames the same way (``mode="edge"``) but pads
  space with zeros, centred; tok replicates in space too, because a zero border is an
  edge the encoder spends tokens on and the decoder bleeds back into the picture.
  :func:`decode_any` crops back to the stored size.
- **Tiles** (images, ``tile`` pixels per side): encoding cuts the latent grid into
  ``tile / f`` squares; each square is encoded from its pixels plus ``overlap`` pixels of
  context on every side (clipped at the image's border) and only the square's own tokens
  are kept — the overlap's tokens are cropped (the overlap-tile strategy of U-Net,
  Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597), since tokens cannot be
  blended. Decoding decodes each square with the same context and **blends** the
  overlaps linearly, the weights of two neighbours summing to 1 at every pixel, as
  diffusers' tiled VAE decode does (``AutoencoderKL.tiled_decode``, ``blend_v``/
  ``blend_h``, huggingface/diffusers ``autoencoder_kl.py``) — so the seams are hidden.
  An input that fits in one tile is encoded and decoded whole: exactly the untiled
  result.
- **Windows** (videos, ``window`` frames, ``1 + temporal_factor · k``): a long clip is
  cut into consecutive windows of ``window`` frames, each encoded on its own (its first
  frame, like every causal clip's, alone), the windows' tokens concatenated in time;
  decoding splits the latent frames the same way. This is Cosmos-Tokenizer's temporal
  windowing (``CausalVideoTokenizer.forward(video, temporal_window=17)``, consecutive
  windows each padded on its own, ``cosmos_tokenizer/video_lib.py``). A clip no longer
  than one window is encoded whole.

Axis legend: ``b`` batch, ``c`` channels, ``t`` frames, ``h w`` pixels, ``i j`` latent
rows and columns, ``s`` streams (or latent dimensions).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, TokError

__all__ = [
    "strides",
    "padded_size",
    "pad_to_stride",
    "check_tiling",
    "encode_any",
    "decode_any",
    "grid_for",
]


def strides(tokenizer: Any) -> tuple[int, ...]:
    """The input's steps per latent position of ``tokenizer``: ``(f_h, f_w)`` for an image
    tokenizer, ``(f_t, f_h, f_w)`` for a video one (``f_t`` the temporal factor: ``1 +
    f_t · k`` frames give ``1 + k`` latent frames).

    :raises ConfigError: for a tokenizer that takes its trained size only (a 1D-token or
        MLP architecture: its grid is not the input's grid divided by a stride).
    """
    shape, grid = tuple(tokenizer.input_shape), tuple(tokenizer.grid)
    arch = tokenizer.architecture
    if len(grid) != len(shape) - 1:
        raise ConfigError(
            f"the {tokenizer.architecture_name} architecture takes its trained size only "
            f"({'x'.join(map(str, shape))}): its grid {grid} does not follow the input's size"
        )
    spatial = tuple(s // g for s, g in zip(shape[-2:], grid[-2:], strict=True))
    if len(shape) == 3:
        found = spatial
    elif grid[0] > 1:
        found = ((shape[1] - 1) // (grid[0] - 1), *spatial)
    else:
        found = (int(getattr(arch, "temporal_factor", 1)), *spatial)
    try:  # a twice-as-large input must give a twice-as-large grid
        probe = tokenizer.architecture.grid((*shape[:-2], *(2 * s for s in shape[-2:])))
    except TokError as exc:
        raise ConfigError(
            f"the {tokenizer.architecture_name} architecture takes its trained size only "
            f"({'x'.join(map(str, shape))}): {exc}"
        ) from exc
    if tuple(probe[-2:]) != tuple(2 * g for g in grid[-2:]):
        raise ConfigError(
            f"the {tokenizer.architecture_name} architecture takes its trained size only "
            f"({'x'.join(map(str, shape))})"
        )
    return found


def grid_for(tokenizer: Any, size: tuple[int, ...], *, window: int = 0) -> tuple[int, ...]:
    """The grid :func:`encode_any` gives an input of ``size`` (``(h, w)`` or ``(t, h, w)``)
    with ``window`` (videos: latent frames summed over the windows)."""
    step = strides(tokenizer)
    target = padded_size(tuple(size), step)
    grid = [s // f for s, f in zip(target[-2:], step[-2:], strict=True)]
    if len(size) == 3:
        t, ft = size[0], step[0]
        chunks = [min(window, t - s) for s in range(0, t, window)] if window else [t]
        grid.insert(0, sum(1 + math.ceil((c - 1) / ft) for c in chunks))
    return tuple(grid)


def padded_size(size: tuple[int, ...], step: tuple[int, ...]) -> tuple[int, ...]:
    """``size`` (``(h, w)`` or ``(t, h, w)``) brought up to the next size the strides
    ``step`` (:func:`strides`) take: each side to a multiple of its stride, frames to
    ``1 + f_t · k``."""
    if len(size) != len(step):
        raise ConfigError(f"size {size} and strides {step} have different lengths")
    out = [math.ceil(s / f) * f for s, f in zip(size[-2:], step[-2:], strict=True)]
    if len(size) == 3:
        t, ft = size[0], step[0]
        out.insert(0, 1 + math.ceil((t - 1) / ft) * ft)
    return tuple(out)


def pad_to_stride(x: Tensor, step: tuple[int, ...]) -> Tensor:
    """``x`` — images ``(b, c, h, w)`` or videos ``(b, c, t, h, w)`` — padded at the end of
    each axis to :func:`padded_size` by replicating the last row, column and frame (see
    the module docstring for why); returned as it is when nothing is to pad."""
    size = tuple(x.shape[2:])
    target = padded_size(size, step)
    if target == size:
        return x
    pads: list[int] = []
    for have, want in zip(reversed(size), reversed(target), strict=True):
        pads += [0, want - have]
    return F.pad(x, pads, mode="replicate")


def check_tiling(
    tokenizer: Any, *, tile: int = 0, overlap: int | None = None, window: int = 0
) -> None:
    """Refuse, before any work, tiling options that do not fit ``tokenizer``: ``tile`` for
    videos or ``window`` for images, ``tile``/``overlap`` not multiples of the stride,
    ``overlap`` without ``tile`` or over half of it, ``window`` not ``1 + f_t · k``; and a
    tokenizer of one size only (:func:`strides`).

    :raises ConfigError: naming the option and what would fit.
    """
    step = strides(tokenizer)
    video = len(tokenizer.input_shape) == 4
    if tile and video:
        raise ConfigError("--tile applies to images; cut long videos with --window")
    if window and not video:
        raise ConfigError("--window applies to videos; cut large images with --tile")
    if overlap is not None and not tile:
        raise ConfigError("--overlap applies with --tile only")
    f = max(step[-2:])
    _check_step("tile", tile, f)
    if tile:
        _margin(tile, overlap, f)
    _check_window(window, step[0])


def _check_step(name: str, value: int, f: int) -> None:
    if value < 0 or value % f:
        raise ConfigError(f"--{name} must be 0 (off) or a multiple of the stride {f}, got {value}")


def _tiles(n: int, core: int) -> list[tuple[int, int]]:
    """Core ranges ``[start, stop)`` of ``core`` latent positions covering ``n``."""
    return [(i, min(n, i + core)) for i in range(0, n, core)]


def encode_any(
    tokenizer: Any,
    x: Tensor,
    *,
    tile: int = 0,
    overlap: int | None = None,
    window: int = 0,
) -> Tensor:
    """Encode inputs of any size: images ``(b, c, h, w)`` or videos ``(b, c, t, h, w)``,
    float in ``[0, 1]`` or uint8 (converted a window or image at a time), one size for
    the batch.

    :param tile: images: encode in tiles of ``tile × tile`` pixels (a multiple of the
        stride; 0: whole). Each tile's tokens come from its pixels plus ``overlap``
        pixels of context on each side; the context's tokens are dropped.
    :param overlap: the context, a multiple of the stride (default: a quarter of
        ``tile``, rounded down to the stride, at least one stride).
    :param window: videos: encode in windows of ``window`` frames (``1 + f_t · k``;
        0: whole clip).
    :returns: codes ``(b, *grid, s)`` — int64 indices, or a continuous tokenizer's
        float32 latents — of the padded input (:func:`padded_size`; ``grid`` is the
        padded size divided by the strides, time in windows for videos).
    :raises ConfigError: a tokenizer that takes its trained size only, ``tile`` or
        ``overlap`` not a multiple of the stride, ``window`` not ``1 + f_t · k``,
        ``tile`` given for videos or ``window`` for images; and what
        :meth:`tok.models.Tokenizer.encode` raises.
    """
    step = strides(tokenizer)
    if x.ndim == 5:
        if tile:
            raise ConfigError("--tile applies to images; cut long videos with --window")
        return _encode_windows(tokenizer, x, step, window)
    if window:
        raise ConfigError("--window applies to videos; cut large images with --tile")
    xp = pad_to_stride(_floats(x), step)
    fh, fw = step
    f = max(fh, fw)
    _check_step("tile", tile, f)
    hp, wp = xp.shape[-2:]
    if not tile or (hp <= tile and wp <= tile):
        return tokenizer.encode(xp)
    margin = _margin(tile, overlap, f)
    gh, gw = hp // fh, wp // fw
    out: Tensor | None = None
    for i0, i1 in _tiles(gh, tile // fh):
        a0, a1 = max(0, i0 - margin // fh), min(gh, i1 + margin // fh)
        for j0, j1 in _tiles(gw, tile // fw):
            b0, b1 = max(0, j0 - margin // fw), min(gw, j1 + margin // fw)
            codes = tokenizer.encode(xp[..., a0 * fh : a1 * fh, b0 * fw : b1 * fw])
            if out is None:
                out = codes.new_empty((codes.shape[0], gh, gw, codes.shape[-1]))
            out[:, i0:i1, j0:j1] = codes[:, i0 - a0 : i1 - a0, j0 - b0 : j1 - b0]
    assert out is not None
    return out


def _margin(tile: int, overlap: int | None, f: int) -> int:
    if overlap is None:
        return max(f, tile // 4 // f * f)
    _check_step("overlap", overlap, f)
    if 2 * overlap > tile:
        raise ConfigError(f"--overlap {overlap} must be at most half of --tile {tile}")
    return overlap


def _encode_windows(tokenizer: Any, x: Tensor, step: tuple[int, ...], window: int) -> Tensor:
    _check_window(window, step[0])
    t = x.shape[2]
    if not window or t <= window:
        return tokenizer.encode(pad_to_stride(_floats(x), step))
    parts = [
        tokenizer.encode(pad_to_stride(_floats(x[:, :, s : s + window]), step))
        for s in range(0, t, window)
    ]
    return torch.cat(parts, dim=1)


def _floats(x: Tensor) -> Tensor:
    """uint8 pixels as float32 in ``[0, 1]`` (a window at a time: a long uint8 clip is a
    quarter of its float32 size); float inputs as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def decode_any(
    tokenizer: Any,
    codes: Tensor,
    *,
    size: tuple[int, ...],
    tile: int = 0,
    overlap: int | None = None,
    window: int = 0,
) -> Tensor:
    """Decode codes of :func:`encode_any` back to inputs of ``size`` (``(h, w)`` or ``(t,
    h, w)``, the size before padding): float32 ``(b, c, *size)`` in ``[0, 1]``.

    ``window`` must be the one the codes were encoded with. ``tile`` (pixels, a multiple of
    the stride; 0: whole) decodes images tile by tile, each with ``overlap`` pixels of
    context, the overlaps blended linearly (the module docstring); it need not be the
    encode's. Codes that fit one tile decode exactly as :meth:`Tokenizer.decode`.

    :raises ConfigError: a ``size`` the codes' grid does not come from, bad ``tile``,
        ``overlap`` or ``window``; and what :meth:`Tokenizer.decode` raises.
    """
    step = strides(tokenizer)
    size = tuple(int(s) for s in size)
    target = padded_size(size, step)
    if codes.ndim == 5:
        if tile:
            raise ConfigError("--tile applies to images; videos decode by --window")
        _check_window(window, step[0])
        _check_grid(tokenizer, codes, size, window)
        y = _decode_windows(tokenizer, codes, step, window, size[0])
        return y[:, :, : size[0], : size[1], : size[2]]
    want = _check_grid(tokenizer, codes, size, 0)
    fh, fw = step
    f = max(fh, fw)
    _check_step("tile", tile, f)
    hp, wp = target
    if not tile or (hp <= tile and wp <= tile):
        return tokenizer.decode(codes)[..., : size[0], : size[1]]
    margin = _margin(tile, overlap, f)
    gh, gw = want
    out: Tensor | None = None
    weight = torch.zeros((hp, wp), device=codes.device)
    for i0, i1 in _tiles(gh, tile // fh):
        a0, a1 = max(0, i0 - margin // fh), min(gh, i1 + margin // fh)
        rows = _ramp(a0 * fh, a1 * fh, i0 * fh, i1 * fh, hp, margin, codes.device)
        for j0, j1 in _tiles(gw, tile // fw):
            b0, b1 = max(0, j0 - margin // fw), min(gw, j1 + margin // fw)
            cols = _ramp(b0 * fw, b1 * fw, j0 * fw, j1 * fw, wp, margin, codes.device)
            y = tokenizer.decode(codes[:, a0:a1, b0:b1])
            if out is None:
                out = y.new_zeros((*y.shape[:2], hp, wp))
            w = rows[:, None] * cols[None, :]
            out[..., a0 * fh : a1 * fh, b0 * fw : b1 * fw] += y * w
            weight[a0 * fh : a1 * fh, b0 * fw : b1 * fw] += w
    assert out is not None
    return (out / weight)[..., : size[0], : size[1]].clamp(0, 1)


def _check_grid(tokenizer: Any, codes: Tensor, size: tuple[int, ...], window: int) -> tuple:
    want = grid_for(tokenizer, size, window=window)
    got = tuple(codes.shape[1 : 1 + len(want)])
    if got != want:
        what = "video" if len(size) == 3 else "image"
        raise ConfigError(
            f"codes of grid {'x'.join(map(str, got))} do not come from a "
            f"{'x'.join(map(str, size))} {what}"
            + (f" in windows of {window} frames" if window else "")
            + f" (that gives {'x'.join(map(str, want))})"
        )
    return want


def _check_window(window: int, ft: int) -> None:
    if window < 0 or (window and (window - 1) % ft):
        raise ConfigError(
            f"--window must be 0 (off) or 1 + {ft}·k frames (e.g. {1 + 4 * ft}), got {window}"
        )


def _ramp(lo: int, hi: int, start: int, stop: int, n: int, m: int, device: Any) -> Tensor:
    """Blending weights of pixels ``lo..hi`` of a tile whose core is ``start..stop``: 1 in
    the core, falling linearly to 0 over ``m`` pixels on each side of an inner edge, so
    that two neighbours' weights sum to 1 (none at the image's border)."""
    y = torch.arange(lo, hi, device=device, dtype=torch.float32) + 0.5
    w = torch.ones_like(y)
    if start > 0:
        w = torch.minimum(w, ((y - (start - m)) / (2 * m)).clamp(0, 1))
    if stop < n:
        w = torch.minimum(w, (((stop + m) - y) / (2 * m)).clamp(0, 1))
    return w


def _decode_windows(
    tokenizer: Any, codes: Tensor, step: tuple[int, ...], window: int, t: int
) -> Tensor:
    ft = step[0]
    if not window or t <= window:
        return tokenizer.decode(codes)
    latent = 1 + (window - 1) // ft
    parts = [tokenizer.decode(codes[:, s : s + latent]) for s in range(0, codes.shape[1], latent)]
    return torch.cat(parts, dim=2)
