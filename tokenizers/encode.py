"""``tok encode`` and ``tok decode``: images and videos ↔ token folders.

Encoding reads the source shard by shard, so a killed encode resumes where it
stopped (see :class:`tok.tokens.TokenDir`). Decoding writes one file per row,
named by the row's source key, each atomically: a PNG for an image, an mp4
(or GIF) for a video, plus ``preview.gif`` showing the first videos side by
side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision.io import encode_png
from tqdm.auto import tqdm

from ._io import atomic_path
from .config import build, parameters
from .data import Dataset, ImageFolder, VideoFolder, VideoShards
from .data.base import to_uint8
from .data.folder import list_files, quiet_torchvision_io
from .data.video import VIDEO_EXTENSIONS, VIDEO_FORMATS, side_by_side, write_video
from .errors import (
    ConfigError,
    DatasetError,
    OutputDirError,
    TokenFileError,
    TokenizerMismatchError,
)
from .models import Tokenizer
from .registry import registry
from .tokens import TokenDir, TokenHeader, load_tokens

__all__ = ["encode", "decode", "decode_files", "open_source", "PREVIEW_VIDEOS"]

#: how many videos ``preview.gif`` shows side by side
PREVIEW_VIDEOS = 8


def _holds_shards(folder: Path) -> bool:
    """Whether ``folder`` holds ``.tar`` files (itself or in subfolders, hidden ones ignored)."""
    return any(p.suffix.lower() == ".tar" for p in list_files(folder))


def open_source(
    src: str,
    tokenizer: Tokenizer,
    *,
    split: str,
    resize: str = "error",
    fps: float | None = None,
) -> tuple[Dataset, str]:
    """The dataset and split that ``src`` names, for ``tokenizer``'s inputs.

    For an image tokenizer (``input_shape`` ``(c, h, w)``): a folder of images
    or ``DATASET:SPLIT``. For a video tokenizer (``(c, t, h, w)``): a folder of
    video files (:class:`~tok.data.VideoFolder`), a ``.tar`` shard or a folder
    of them (:class:`~tok.data.VideoShards`), or ``DATASET:SPLIT``; clips are
    the first ``t`` frames (resampled to ``fps`` when given), ``h×w`` per
    ``resize``.
    """
    shape = tokenizer.input_shape
    path = Path(src)
    if len(shape) == 4:
        channels, frames, height, width = shape
        options = {
            "channels": channels,
            "frames": frames,
            "fps": fps,
            "size": [height, width],
            "resize": resize,
        }
        if (path.is_file() and path.suffix.lower() == ".tar") or (
            path.is_dir() and _holds_shards(path)
        ):
            return VideoShards(path=str(path), **options), split  # type: ignore[arg-type]
        if path.is_dir():
            return VideoFolder(path=str(path), **options), split  # type: ignore[arg-type]
    elif fps is not None:
        raise DatasetError("--fps applies to video tokenizers only; this tokenizer takes images")
    channels, height, width = shape[0], shape[-2], shape[-1]
    if path.is_dir():
        dataset = ImageFolder(
            path=str(path), channels=channels, size=[height, width], resize=resize
        )  # type: ignore[arg-type]
        return dataset, split
    name, sep, ds_split = src.partition(":")
    if sep and name in registry("datasets"):
        cls = registry("datasets").get(name)
        accepted = parameters(cls)
        options = {"channels": channels} if "channels" in accepted else {}
        if len(shape) == 4 and "frames" in accepted:  # a video dataset: the tokenizer's clip length
            options["frames"] = shape[1]
        try:
            return build("datasets", name, options), ds_split or split
        except ConfigError as exc:
            raise DatasetError(
                f"dataset {name!r} cannot be named as DATASET:SPLIT here ({exc}); "
                f"give a folder of images instead"
            ) from exc
    if len(shape) == 4:
        raise DatasetError(
            f"no folder or .tar shard {src!r}; this tokenizer takes videos: give a folder of "
            f"video files ({' '.join(VIDEO_EXTENSIONS)}), webdataset .tar shards or DATASET:SPLIT "
            f"(datasets: {', '.join(registry('datasets').names())})"
        )
    if path.exists():
        raise DatasetError(
            f"{src} is not a folder; give a folder of images or DATASET:SPLIT such as mnist:test"
        )
    raise DatasetError(
        f"no folder {src!r}; give a folder of PNG/JPEG images or DATASET:SPLIT "
        f"(datasets: {', '.join(registry('datasets').names())})"
    )


def _check_shape(src: str, run: Any, shape: tuple[int, ...], tokenizer: Tokenizer) -> None:
    if shape != tokenizer.input_shape:
        raise DatasetError(
            f"{src} yields inputs of shape {shape} but the tokenizer in {run} takes "
            f"{tokenizer.input_shape}"
        )


def encode(
    src: str,
    *,
    out: str | os.PathLike[str],
    run: str | os.PathLike[str],
    split: str = "test",
    shard_size: int = 1000,
    batch_size: int = 256,
    resize: str = "error",
    fps: float | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Encode ``src`` with the tokenizer in ``run`` into the token folder ``out``.

    ``src`` is what :func:`open_source` accepts; ``fps`` resamples videos.
    Returns a summary: ``items``, ``shards``, ``resumed`` (shards already done
    before this call), ``grid`` and ``streams``.
    """
    if shard_size < 1 or batch_size < 1:
        raise DatasetError("--shard-size and --batch-size must be at least 1")
    tokenizer = Tokenizer.load(run, map_location=device)
    dataset, split = open_source(src, tokenizer, split=split, resize=resize, fps=fps)
    keys = dataset.readable_keys(split)
    try:
        shape = tuple(dataset.input_shape())
    except NotImplementedError:  # a plugin dataset that does not say: checked per shard below
        shape = tokenizer.input_shape
    _check_shape(src, run, shape, tokenizer)
    header = TokenHeader.for_tokenizer(tokenizer, path=str(Path(run).resolve()), source=src)
    tdir = TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)
    pending = tdir.pending()
    resumed = tdir.num_shards - len(pending)
    for index, shard_keys in tqdm(pending, desc="encode", unit="shard", disable=not progress):
        samples = dataset.read(split, shard_keys)
        if samples.keys != shard_keys:
            raise DatasetError(
                f"files in {src} changed while encoding (shard {index}); run the command again"
            )
        _check_shape(src, run, tuple(samples.images.shape[1:]), tokenizer)
        rows = [
            tokenizer.encode(samples.floats(slice(i, i + batch_size)).to(device)).cpu()
            for i in range(0, len(samples), batch_size)
        ]
        tdir.write_shard(index, torch.cat(rows))
    return {
        "items": len(keys),
        "shards": tdir.num_shards,
        "resumed": resumed,
        "grid": "x".join(str(g) for g in tokenizer.grid),
        "streams": tokenizer.quantizer.num_streams,
    }


def _row_path(out: Path, key: str, suffix: str) -> Path:
    parts = Path(key).parts
    if not parts or Path(key).is_absolute() or ".." in parts:
        raise TokenFileError(f"row key {key!r} is not a safe relative file name")
    return out.joinpath(*parts).with_name(parts[-1] + suffix)


def decode(tokens: str | os.PathLike[str], **options: Any) -> int:
    """Decode a token file or folder into files under ``out``; returns how many rows were written.

    Takes the arguments of :func:`decode_files` (``out`` is required; ``run``,
    ``force``, ``batch_size``, ``video_format``, ``fps``, ``progress``,
    ``device``), which also says what was written.
    """
    return decode_files(tokens, **options)["items"]


def decode_files(
    tokens: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    run: str | os.PathLike[str] | None = None,
    force: bool = False,
    batch_size: int = 256,
    video_format: str = "mp4",
    fps: float = 8.0,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Decode a token file or folder into ``out``: ``KEY.png`` per image row, or for a video
    tokenizer ``KEY.mp4`` (``video_format = "gif"``: ``KEY.gif``) per row at ``fps`` frames
    per second plus ``preview.gif``, the first :data:`PREVIEW_VIDEOS` videos side by side.

    The tokenizer is ``run`` or, when omitted, the one recorded in the tokens.
    Tokens from a different tokenizer (another weights sha256) are refused
    unless ``force``. ``out`` must be new or empty.

    Returns ``items`` (rows written), ``kind`` (``"images"`` or ``"videos"``),
    ``format`` (``"png"``, ``"mp4"`` or ``"gif"``) and ``preview`` (the
    preview's path, or ``None`` for images).
    """
    if video_format not in VIDEO_FORMATS:
        raise ConfigError(f"--video-format must be mp4 or gif, got {video_format!r}")
    if not fps or fps <= 0:
        raise ConfigError(f"--fps must be positive, got {fps!r}")
    tf = load_tokens(tokens)
    header: TokenHeader = tf.header
    run = run or header.tokenizer_path
    if not run:
        raise TokenFileError(f"{tokens} does not record its tokenizer; pass --run RUN")
    tokenizer = Tokenizer.load(run, map_location=device)
    if not header.same_tokenizer(tokenizer.weights_sha256 or "") and not force:
        raise TokenizerMismatchError(
            f"{tokens} was made by a tokenizer with weights sha256 {header.tokenizer_sha256[:12]}…, "
            f"but {run} has {str(tokenizer.weights_sha256)[:12]}…; pass the right --run, "
            f"or --force to decode anyway"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(
            f"output folder {out} already exists and is not empty; tok never overwrites files — choose a new --out"
        )
    videos = len(tokenizer.input_shape) == 4
    fmt = video_format if videos else "png"
    paths = [_row_path(out, key, "." + fmt) for key in tf.keys]
    preview = None
    if videos:
        taken = set(paths)
        preview = out / "preview.gif"
        while preview in taken:  # a row's own key is "preview"
            preview = preview.with_name("_" + preview.name)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    shown: list[torch.Tensor] = []
    for start in tqdm(
        range(0, len(tf.keys), batch_size), desc="decode", unit="batch", disable=not progress
    ):
        rows = to_uint8(tokenizer.decode(tf.tokens[start : start + batch_size].to(device)).cpu())
        for row, path in zip(rows, paths[start : start + batch_size], strict=True):
            if videos:  # row (c, t, h, w)
                write_video(path, row.transpose(0, 1), fps=fps, format=fmt)
                if len(shown) < PREVIEW_VIDEOS:
                    shown.append(row)
            else:
                with quiet_torchvision_io():
                    data = encode_png(row).numpy().tobytes()
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)
            n += 1
    if preview is not None and shown:
        write_video(preview, side_by_side(torch.stack(shown)), fps=fps, format="gif")
    return {
        "items": n,
        "kind": "videos" if videos else "images",
        "format": fmt,
        "preview": preview if shown else None,
    }
