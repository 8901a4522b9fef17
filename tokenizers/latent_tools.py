"""Latent tools, for every tokenizer: a walk between two images through the latent space
(``tok interpolate``) and a map of that space (``tok latent-map``).

**Which latent.** What the encoder gives, before anything is rounded:

- a discrete tokenizer: the encoder output ``z`` ``(b, *grid, d)``, before
  quantisation. A point ``z`` is decoded as a token would be, through the run's
  quantizer: ``decoder(quantizer(z).latent)``;
- a continuous tokenizer (a VAE): the posterior mean ``μ`` ``(b, *grid, l)``. A point
  is decoded as a stored latent is: ``decoder(bottleneck.latent_to_codes(μ))``.

Decoding an image's own latent therefore gives its reconstruction
(:meth:`tok.models.Tokenizer.reconstruct`).

**Interpolation** (:func:`interpolation`, :func:`interpolate`). ``z_t = (1 - t)·z_A +
t·z_B`` at ``k`` evenly spaced ``t = i / (k - 1)``, ``i = 0 … k - 1``: the first and the
last are the reconstructions of A and B. The strip shows original A, the ``k`` decoded
steps, original B, each captioned.

**Latent map** (:func:`project`, :func:`latent_map`). Each of ``n`` images' latent is
flattened to a vector of ``D = prod(grid)·d`` numbers (``X``, ``(n, D)``). For ``D = 2``
the axes are those two numbers. For ``D > 2``, the two directions of largest variance
(PCA): with ``x̄`` the mean of the rows of ``X`` and ``U S Vᵀ`` the SVD of ``X - x̄``, the
first two rows of ``Vᵀ``, ``v1`` and ``v2`` (each one's sign fixed so that its largest
entry is positive), are the axes, ``(X - x̄)·v_j`` the coordinates and ``S_j² / Σ S²``
each one's share of the variance. The decoded grid: ``G × G`` points evenly spaced over
the 1st to 99th percentile of the scatter on each axis (the dashed box on the scatter);
point ``(a, b)`` is decoded from ``x̄ + a·v1 + b·v2`` (every other direction at the
mean) and drawn centred on its place, on the same axes as the scatter.

Axis legend: ``n`` images, ``c`` channels, ``h w`` pixels, ``*grid`` the latent grid,
``d`` the encoder's channels, ``l`` a continuous latent's dimensions, ``D`` one
flattened latent, ``k`` interpolation steps, ``G`` the map's grid side.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import media, plots
from ._io import atomic_path, check_writable
from .components import Facts, build
from .data import Dataset
from .errors import ConfigError, DatasetError, TokError
from .models import Tokenizer
from .registry import registry
from .run import Run

__all__ = [
    "encode_latents",
    "decode_latents",
    "interpolation",
    "interpolate",
    "project",
    "Projection",
    "latent_map",
    "read_input",
    "MAP_SIZE",
]

#: the size in px of the picture ``tok latent-map`` writes
MAP_SIZE = (1400, 700)
#: tiles of the interpolation strip are upscaled (by pixel repetition) to at least this many px
_TILE_PX = 80
_PAD = 4  # px of white around each tile of the strip
_SEP = 18  # px between the originals and the decoded steps (a grey rule in the middle)
_CAPTION = 16  # px of caption under each tile
_LINE = 16  # px per header line
_BATCH = 500  # images per forward pass


def _latent_kind(tokenizer: Tokenizer) -> str:
    """What the tools interpolate and map, in words."""
    if tokenizer.continuous:
        return f"the latent mean of the {tokenizer.bottleneck_name} bottleneck"
    return f"the encoder output before quantisation (each point quantised by {tokenizer.bottleneck_name})"


def _check_images(tokenizer: Tokenizer, what: str) -> None:
    if len(tokenizer.input_shape) != 3:
        raise TokError(
            f"{what} draws images; this is a video tokenizer (inputs "
            f"{'x'.join(map(str, tokenizer.input_shape))}, c x t x h x w)"
        )


@torch.no_grad()
def encode_latents(tokenizer: Tokenizer, images: Tensor) -> Tensor:
    """Images ``(n, c, h, w)`` in ``[0, 1]`` → the latent the tools work in, float32:
    the encoder output before quantisation ``(n, *grid, d)`` for a discrete tokenizer,
    the latent mean ``(n, *grid, l)`` for a continuous one."""
    if tokenizer.continuous:
        return tokenizer.encode(images)  # the means (the bottleneck in eval mode)
    tokenizer.check_input(images)
    return tokenizer.architecture.encode(tokenizer.to_input(images)).float()


@torch.no_grad()
def decode_latents(tokenizer: Tokenizer, latents: Tensor) -> Tensor:
    """:func:`encode_latents`'s latents ``(n, *grid, d|l)`` → images ``(n, c, h, w)``
    clamped to ``[0, 1]``: through the quantizer (discrete) or ``latent_to_codes``
    (continuous), then the decoder — as :meth:`Tokenizer.reconstruct` does."""
    if tokenizer.continuous:
        return tokenizer.decode(latents.float())
    quantizer = tokenizer.quantizer
    was_training = quantizer.training
    quantizer.eval()  # no codebook update, no noise: the tokens encode would give
    try:
        latent = quantizer(latents.to(tokenizer.dtype)).latent
    finally:
        quantizer.train(was_training)
    return tokenizer.to_image(tokenizer.architecture.decode(latent.to(tokenizer.dtype))).clamp(0, 1)


def _batches(fn, x: Tensor) -> Tensor:
    return torch.cat([fn(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)])


# interpolation -----------------------------------------------------------------------


@torch.no_grad()
def interpolation(
    tokenizer: Tokenizer, a: Tensor, b: Tensor, steps: int = 10
) -> tuple[Tensor, list[float]]:
    """Decode ``steps`` points on the line between the latents of images ``a`` and ``b``
    (``(c, h, w)`` in ``[0, 1]``): ``(decoded (k, c, h, w), t)`` with ``t = i / (k - 1)``.
    The first and last are the reconstructions of ``a`` and ``b``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise TokError(f"--steps must be an integer of at least 2 (t = 0 and t = 1), got {steps!r}")
    za, zb = encode_latents(tokenizer, torch.stack([a, b]).to(_device(tokenizer)))
    t = [i / (steps - 1) for i in range(steps)]
    w = torch.tensor(t, dtype=za.dtype, device=za.device).view(-1, *[1] * za.ndim)
    path = (1 - w) * za + w * zb  # (k, *grid, d): t = 0 and t = 1 are exactly za and zb
    return decode_latents(tokenizer, path).cpu(), t


def _device(tokenizer: Tokenizer) -> torch.device:
    return next(tokenizer.parameters()).device


_SPEC = re.compile(r"(?P<name>[^:]+):(?P<split>[^:]+):(?P<index>-?\d+)")


def read_input(spec: str, tokenizer: Tokenizer, run: Run, *, option: str) -> tuple[Tensor, str]:
    """The image ``spec`` names — an image file, or ``DATASET:SPLIT:INDEX`` (``mnist:test:3``)
    — as ``(c, h, w)`` floats in ``[0, 1]`` of the tokenizer's channels, and a short name
    for it. Errors are one :class:`TokError` line starting with ``option`` and ``spec``."""
    c, h, w = tokenizer.input_shape
    where = f"{option} {spec}"
    path = Path(spec)
    if path.is_dir():
        raise TokError(f"{where} is a folder; give an image file or DATASET:SPLIT:INDEX")
    if path.is_file():
        try:
            image = media.read_image(path, channels=c)
        except TokError as exc:
            raise TokError(f"{where}: {getattr(exc, 'reason', exc)}") from exc
        if tuple(image.shape[1:]) != (h, w):
            raise TokError(
                f"{where} is {image.shape[1]}x{image.shape[2]} pixels; this tokenizer takes "
                f"{h}x{w} images"
            )
        return image.float() / 255, path.name
    found = _SPEC.fullmatch(spec)
    if not found:
        raise TokError(
            f"{where}: no such image file, and not DATASET:SPLIT:INDEX (e.g. mnist:test:3)"
        )
    name, split, index = found["name"], found["split"], int(found["index"])
    dataset = _dataset(name, run, tokenizer, where)
    try:
        keys = dataset.keys(split)
    except DatasetError as exc:
        raise TokError(f"{where}: {exc}") from exc
    if not 0 <= index < len(keys):
        raise TokError(
            f"{where}: index {index} is out of range; {name} {split} has {len(keys)} items "
            f"(0 to {len(keys) - 1})"
        )
    samples = dataset.read(split, [keys[index]])
    if len(samples) != 1:
        raise TokError(f"{where}: item {keys[index]} cannot be read")
    image = samples.floats()[0]
    if tuple(image.shape) != (c, h, w):
        raise TokError(
            f"{where} is {'x'.join(map(str, image.shape))}; this tokenizer takes {c}x{h}x{w} images"
        )
    return image, spec


def _dataset(name: str, run: Run, tokenizer: Tokenizer, where: str) -> Dataset:
    """The dataset ``name``: the run's own (its recipe's options) when it is that one."""
    recipe = run.recipe()
    if name == recipe.data.name:
        return run.dataset(recipe)
    if name not in registry("datasets"):
        raise TokError(
            f"{where}: no dataset {name!r} (datasets: {', '.join(registry('datasets').names())})"
        )
    try:
        return build("datasets", name, {}, Facts(input_shape=tokenizer.input_shape))
    except ConfigError as exc:
        raise TokError(f"{where}: dataset {name!r} cannot be named here ({exc})") from exc


def _check_out(out: str | Path, option: str = "--out") -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise TokError(f"{option} {out}: the picture is a PNG; give a path ending in .png")
    if out.is_dir():
        raise TokError(f"{option} {out} is a folder; give the path of a .png file")
    if not out.parent.is_dir():
        raise TokError(f"{option} {out}: the folder {out.parent} does not exist")
    check_writable(out.parent, what=out.name)
    return out


def _font(size: int = 11):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fmt_t(t: float) -> str:
    return "t = " + (f"{t:.2f}".rstrip("0").rstrip(".") if 0 < t < 1 else f"{t:g}")


@dataclass(frozen=True)
class _Strip:
    """Where :func:`_draw_strip` puts things: the tiles' top-left corners, px."""

    tiles: list[tuple[int, int]]
    tile: tuple[int, int]  # (height, width) of a tile, px
    size: tuple[int, int]  # (width, height) of the picture


def _strip_layout(k: int, h: int, w: int, header_lines: int, header_w: int) -> _Strip:
    scale = max(1, math.ceil(_TILE_PX / max(h, w)))
    th, tw = h * scale, w * scale
    y = header_lines * _LINE + 8
    xs, x = [], _PAD
    for i in range(k + 2):
        xs.append(x)
        x += tw + _PAD
        if i in (0, k):  # after original A and after the last step
            x += _SEP
    width = max(x, header_w + 16)
    return _Strip([(xi, y) for xi in xs], (th, tw), (width, y + th + _CAPTION + _PAD))


def _draw_strip(originals: Tensor, decoded: Tensor, t: list[float], header: list[str]):
    """The strip: original A | the ``k`` decoded steps | original B under ``header``
    lines, each tile captioned; a PIL RGB image and its layout."""
    from PIL import Image, ImageDraw

    k, _, h, w = decoded.shape
    font, bold = _font(11), _font(12)
    header_w = max(int(math.ceil(bold.getlength(line))) for line in header)
    lay = _strip_layout(k, h, w, len(header), header_w)
    image = Image.new("RGB", lay.size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for j, line in enumerate(header):
        draw.text((8, 4 + j * _LINE), line, font=bold if j == 0 else font, fill=(60, 60, 60))
    tiles = torch.cat([originals[:1], decoded, originals[1:]])
    captions = ["original A", *map(_fmt_t, t), "original B"]
    th, tw = lay.tile
    for i, ((x, y), tile, caption) in enumerate(zip(lay.tiles, tiles, captions, strict=True)):
        rgb = tile.expand(3, -1, -1) if tile.shape[0] == 1 else tile
        u8 = media.to_uint8(rgb.cpu()).repeat_interleave(th // h, 1).repeat_interleave(tw // w, 2)
        image.paste(Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy(), mode="RGB"), (x, y))
        if i in (0, k + 1):  # the originals: framed
            draw.rectangle((x - 2, y - 2, x + tw + 1, y + th + 1), outline=(214, 39, 40), width=2)
        tx = x + (tw - font.getlength(caption)) / 2
        colour = (214, 39, 40) if i in (0, k + 1) else (90, 90, 90)
        draw.text((tx, y + th + 3), caption, font=font, fill=colour)
    for i in (0, k):  # grey rules between the originals and the decoded steps
        x = lay.tiles[i][0] + tw + _PAD + _SEP // 2 - 1
        draw.line((x, lay.tiles[0][1] - 4, x, lay.size[1] - 4), fill=(170, 170, 170), width=2)
    return image, lay


def interpolate(
    run: str | Path,
    a: str,
    b: str,
    *,
    steps: int = 10,
    out: str | Path,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Write the interpolation strip from ``a`` to ``b`` (image files or
    ``DATASET:SPLIT:INDEX``) through the latent of ``run``'s tokenizer into ``out`` (a
    ``.png`` in an existing folder), atomically. Returns ``out``, the ``t`` values,
    ``latent`` (which latent, in words), the picture's ``size`` and each tile's
    top-left corner (``tiles``: original A, the steps, original B) and ``tile``
    ``(height, width)``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise TokError(f"--steps must be an integer of at least 2 (t = 0 and t = 1), got {steps!r}")
    out = _check_out(out)
    opened = Run.open(run)
    tokenizer = opened.tokenizer(device)
    _check_images(tokenizer, "tok interpolate")
    image_a, name_a = read_input(a, tokenizer, opened, option="--from")
    image_b, name_b = read_input(b, tokenizer, opened, option="--to")
    decoded, t = interpolation(tokenizer, image_a, image_b, steps)
    header = [
        f"{opened.path.name}: A = {name_a} to B = {name_b}, {steps} steps",
        f"linear in {_latent_kind(tokenizer)}; t = 0 and t = 1 are the reconstructions",
    ]
    picture, lay = _draw_strip(torch.stack([image_a, image_b]), decoded, t, header)
    with atomic_path(out) as tmp:
        picture.save(tmp, format="PNG")
    return {
        "out": str(out),
        "t": t,
        "latent": _latent_kind(tokenizer),
        "size": lay.size,
        "tiles": lay.tiles,
        "tile": lay.tile,
    }


# latent map ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A plane in the flattened latent space: ``x = mean + a·basis[0] + b·basis[1]``.

    ``explained``: each axis's share of the variance (PCA), ``None`` when the latent
    has two numbers and the axes are those numbers."""

    mean: Tensor  # (D,)
    basis: Tensor  # (2, D), orthonormal rows
    explained: tuple[float, float] | None

    def coordinates(self, x: Tensor) -> Tensor:
        """Flattened latents ``(n, D)`` → their coordinates in the plane ``(n, 2)``."""
        return (x.double() - self.mean) @ self.basis.T

    def point(self, ab: Tensor) -> Tensor:
        """Coordinates ``(m, 2)`` → flattened latents ``(m, D)`` on the plane."""
        return self.mean + ab.double() @ self.basis


def project(x: Tensor) -> Projection:
    """The plane of the latent map for flattened latents ``x`` ``(n, D)``, ``D ≥ 2``:
    the two numbers themselves for ``D = 2``, else the first two principal directions
    (the module's docstring has the method)."""
    n, d = x.shape
    if d < 2:
        raise TokError(f"a latent map needs at least 2 latent numbers per image; these have {d}")
    x = x.double()
    if d == 2:
        return Projection(x.new_zeros(2), torch.eye(2, dtype=x.dtype), None)
    mean = x.mean(0)
    centred = x - mean
    if n < 2:
        raise TokError("a latent map with principal directions needs at least 2 images")
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)
    basis = vt[:2].clone()
    for row in basis:  # a fixed sign: each direction's largest entry is positive
        if row[row.abs().argmax()] < 0:
            row.neg_()
    total = float((s**2).sum()) or 1.0
    explained = (float(s[0] ** 2) / total, float(s[1] ** 2) / total)
    return Projection(mean, basis, explained)


def _box(coords: Tensor) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)``: the 1st to 99th percentile of each coordinate (widened to
    ±1 around a coordinate that hardly varies)."""
    lo = torch.quantile(coords, 0.01, dim=0)
    hi = torch.quantile(coords, 0.99, dim=0)
    box = []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        if b - a < 1e-6:
            a, b = a - 1.0, b + 1.0
        box += [a, b]
    return tuple(box)


def latent_map(
    run: str | Path,
    *,
    out: str | Path,
    split: str = "test",
    samples: int = 5000,
    grid: int = 15,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Write the latent map of ``run``'s tokenizer on the first ``samples`` images (0:
    all) of ``split`` of its dataset into ``out`` (a ``.png`` in an existing folder,
    :data:`MAP_SIZE` px), atomically: the scatter of their latents in the plane of
    :func:`project`, coloured by the dataset's labels when it has them, beside a
    ``grid × grid`` grid of images decoded over that plane. Returns ``out``, ``images``,
    ``dims`` (D), ``explained`` (``None`` for D = 2), ``labelled``, ``box`` and
    ``latent`` (which latent, in words)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise TokError(f"--samples must be 0 (all) or a positive number, got {samples!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or not 2 <= grid <= 40:
        raise TokError(f"--grid must be an integer from 2 to 40, got {grid!r}")
    out = _check_out(out)
    opened = Run.open(run)
    recipe = opened.recipe()
    tokenizer = opened.tokenizer(device)
    _check_images(tokenizer, "tok latent-map")
    dataset = opened.dataset(recipe)
    keys = dataset.keys(split)
    keys = keys[:samples] if samples else keys
    if not keys:
        raise TokError(f"{recipe.data.name} {split} has no items to map")
    data = dataset.read(split, keys)
    labels = dataset.labels(split, data.keys)
    images = data.floats().to(_device(tokenizer))
    latents = _batches(lambda x: encode_latents(tokenizer, x), images).cpu()  # (n, *grid, d)
    shape = latents.shape[1:]
    flat = latents.reshape(len(latents), -1)
    plane = project(flat)
    coords = plane.coordinates(flat)
    box = _box(coords)
    x0, x1, y0, y1 = box
    xs = torch.linspace(x0, x1, grid, dtype=torch.float64)
    ys = torch.linspace(y1, y0, grid, dtype=torch.float64)  # row 0 at the top
    ab = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).reshape(-1, 2)
    points = plane.point(ab).float().reshape(-1, *shape).to(_device(tokenizer))
    tiles = _batches(lambda z: decode_latents(tokenizer, z), points).cpu()
    tiles = tiles.reshape(grid, grid, *tiles.shape[1:])
    dims = flat.shape[1]
    what = "latent mean" if tokenizer.continuous else "encoder output (before quantisation)"
    if plane.explained is None:
        xlabel, ylabel = f"{what}, dimension 1", f"{what}, dimension 2"
        method = f"the {what} has 2 dimensions: its own axes"
    else:
        px, py = (100 * e for e in plane.explained)
        xlabel, ylabel = f"PC1 ({px:.1f}% of variance)", f"PC2 ({py:.1f}% of variance)"
        method = f"PCA of the {dims}-dimensional {what}: the 2 directions of largest variance"
    colour = (
        "coloured by label" if labels is not None else "not coloured: the dataset has no labels"
    )
    title = f"latent map of {opened.path.name}: {method}"
    plots.save_latent_map(
        out,
        coords.float(),
        tiles,
        box=box,
        labels=labels,
        xlabel=xlabel,
        ylabel=ylabel,
        title=title,
        scatter_title=f"{len(keys)} {split} images, {colour}",
        grid_title=f"decoded at {grid}x{grid} points over the dashed box\n(1st-99th percentile "
        "of each axis" + (")" if plane.explained is None else "; other directions at the mean)"),
        size=MAP_SIZE,
    )
    return {
        "out": str(out),
        "images": len(keys),
        "dims": dims,
        "explained": plane.explained,
        "labelled": labels is not None,
        "box": box,
        "latent": _latent_kind(tokenizer),
    }
