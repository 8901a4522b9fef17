"""``tok encode`` and ``tok decode``: images ↔ token folders.

Encoding reads the source shard by shard, so a killed encode resumes where it
stopped (see :class:`tok.tokens.TokenDir`). Decoding writes one PNG per row,
named by the row's source key, each atomically.
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
from .data import Dataset, ImageFolder
from .data.base import to_uint8
from .data.folder import quiet_torchvision_io
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

__all__ = ["encode", "decode", "open_source"]


def open_source(
    src: str, tokenizer: Tokenizer, *, split: str, resize: str = "error"
) -> tuple[Dataset, str]:
    """The dataset and split that ``src`` names: a folder of images or ``DATASET:SPLIT``."""
    channels, height, width = tokenizer.input_shape
    path = Path(src)
    if path.is_dir():
        dataset = ImageFolder(
            path=str(path), channels=channels, size=[height, width], resize=resize
        )  # type: ignore[arg-type]
        return dataset, split
    name, sep, ds_split = src.partition(":")
    if sep and name in registry("datasets"):
        cls = registry("datasets").get(name)
        options = {"channels": channels} if "channels" in parameters(cls) else {}
        try:
            return build("datasets", name, options), ds_split or split
        except ConfigError as exc:
            raise DatasetError(
                f"dataset {name!r} cannot be named as DATASET:SPLIT here ({exc}); "
                f"give a folder of images instead"
            ) from exc
    if path.exists():
        raise DatasetError(
            f"{src} is not a folder; give a folder of images or DATASET:SPLIT such as mnist:test"
        )
    raise DatasetError(
        f"no folder {src!r}; give a folder of PNG/JPEG images or DATASET:SPLIT "
        f"(datasets: {', '.join(registry('datasets').names())})"
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
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Encode ``src`` with the tokenizer in ``run`` into the token folder ``out``.

    Returns a summary: ``items``, ``shards``, ``resumed`` (shards already done
    before this call), ``grid`` and ``streams``.
    """
    if shard_size < 1 or batch_size < 1:
        raise DatasetError("--shard-size and --batch-size must be at least 1")
    tokenizer = Tokenizer.load(run, map_location=device)
    dataset, split = open_source(src, tokenizer, split=split, resize=resize)
    keys = dataset.readable_keys(split)
    header = TokenHeader(
        quantizer=tokenizer.quantizer_name,
        quantizer_config=tokenizer.quantizer.config(),
        codebook_sizes=tokenizer.quantizer.codebook_sizes,
        grid=tokenizer.grid,
        tokenizer_sha256=tokenizer.weights_sha256 or "",
        tokenizer_config=tokenizer.config(),
        tokenizer_path=str(Path(run).resolve()),
        source=src,
    )
    tdir = TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)
    pending = tdir.pending()
    resumed = tdir.num_shards - len(pending)
    for index, shard_keys in tqdm(pending, desc="encode", unit="shard", disable=not progress):
        samples = dataset.read(split, shard_keys)
        if samples.keys != shard_keys:
            raise DatasetError(
                f"files in {src} changed while encoding (shard {index}); run the command again"
            )
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


def _png_path(out: Path, key: str) -> Path:
    parts = Path(key).parts
    if not parts or Path(key).is_absolute() or ".." in parts:
        raise TokenFileError(f"row key {key!r} is not a safe relative file name")
    return out.joinpath(*parts).with_name(parts[-1] + ".png")


def decode(
    tokens: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    run: str | os.PathLike[str] | None = None,
    force: bool = False,
    batch_size: int = 256,
    progress: bool = True,
    device: str = "cpu",
) -> int:
    """Decode a token file or folder into PNGs under ``out``; returns how many were written.

    The tokenizer is ``run`` or, when omitted, the one recorded in the tokens.
    Tokens from a different tokenizer (another weights sha256) are refused
    unless ``force``. ``out`` must be new or empty.
    """
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
    paths = [_png_path(out, key) for key in tf.keys]
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for start in tqdm(
        range(0, len(tf.keys), batch_size), desc="decode", unit="batch", disable=not progress
    ):
        images = to_uint8(tokenizer.decode(tf.tokens[start : start + batch_size].to(device)).cpu())
        for image, path in zip(images, paths[start : start + batch_size], strict=True):
            with quiet_torchvision_io():
                data = encode_png(image).numpy().tobytes()
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            n += 1
    return n
