"""``tok encode`` and ``tok decode``: images and videos ↔ token folders.

A discrete tokenizer's folder holds tokens (integer indices); a continuous tokenizer's
(a VAE) holds latents, the posterior means, in the float dtype its header names
(:class:`tok.tokens.LatentHeader`). Both are written, resumed and read the same way.

Encoding (:func:`encode`):

1. the source (a folder, a file, ``DATASET:SPLIT``) is opened through the
   dataset registry (:func:`tok.data.sources.open_source`) for the tokenizer's
   input shape, walking a folder once;
2. its keys are listed from the files' headers, so what is not an image or a
   video is skipped and a size that does not fit is refused before anything is
   written;
3. the keys are cut into shards; each shard's files are decoded once, encoded
   and written (:class:`tok.tokens.TokenDir`). A file that turns out
   unreadable while its shard is encoded is left out and recorded in the
   manifest; every skipped file is named in one warning at the end. The token
   folder appears with the first shard that holds a row, so a source with
   nothing readable leaves nothing behind. A killed encode resumes.

With ``resize = "keep"`` each item is read and encoded alone at its own size
(:mod:`tok.anysize`: padded to the stride, optionally tiled or in windows) and the
shards hold ragged rows (``tok.tokens/4``: each row with its grid and input size).

Decoding (:func:`decode_files`) writes one file per row, named by the row's
source key, each atomically (:func:`tok.media.write_item`: a PNG for an image,
an mp4 or GIF for a video), plus ``preview.gif`` showing the first videos side
by side.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ._io import check_writable
from .anysize import check_tiling, decode_any, encode_any
from .data.folder import walk_once
from .data.sources import open_source
from .device import resolve_device
from .distributed import barrier, follow, is_main, leading, process_group, rank, world_size
from .errors import (
    ConfigError,
    DatasetError,
    FileAccessError,
    OutputDirError,
    TokenFileError,
    TokenizerMismatchError,
)
from .helpers import is_distributed
from .locks import folder_lock
from .media import VIDEO_FORMATS, save_preview, to_uint8, write_item
from .models import Tokenizer
from .tokens import (
    LATENT_DTYPES,
    Header,
    TokenDir,
    check_shard_headers,
    header_for_tokenizer,
    load_tokens,
    plan_shards,
    token_dtype,
)

__all__ = ["encode", "decode_files", "PREVIEW_VIDEOS"]

#: how many videos ``preview.gif`` shows side by side
PREVIEW_VIDEOS = 8


def _check_shape(
    src: str, run: Any, shape: tuple[int, ...], tokenizer: Tokenizer, *, keep: bool = False
) -> None:
    if keep:  # any size: the channels and the kind of input must fit
        want = tokenizer.input_shape
        if len(shape) != len(want) or shape[0] != want[0]:
            raise DatasetError(
                f"{src} yields inputs of shape {shape} but the tokenizer in {run} takes "
                f"{want[0]}-channel {'videos' if len(want) == 4 else 'images'}"
            )
        return
    if shape != tokenizer.input_shape:
        raise DatasetError(
            f"{src} yields inputs of shape {shape} but the tokenizer in {run} takes "
            f"{tokenizer.input_shape}"
        )


def encode(
    src: str,
    *,
    out: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    split: str = "test",
    shard_size: int = 1000,
    batch_size: int = 256,
    resize: str = "error",
    fps: float | None = None,
    limit: int = 0,
    progress: bool = True,
    device: str = "cpu",
    threads: int = 0,
    latent_dtype: str | None = None,
    tile: int = 0,
    overlap: int | None = None,
    window: int = 0,
) -> dict[str, Any]:
    """Encode ``src`` with the tokenizer in the run folder ``tokenizer`` into the token
    folder ``out``.

    ``resize = "keep"`` encodes every image or video at its own size (padded to the
    tokenizer's stride, :mod:`tok.anysize`) into ragged token files (``tok.tokens/4``:
    each row with its grid and input size); ``"error"`` (default), ``"resize"`` and
    ``"center-crop"`` bring every input to the tokenizer's size. ``tile`` (pixels, a
    multiple of the stride; 0: off) encodes images in tiles with ``overlap`` pixels of
    context, ``window`` (frames, ``1 + temporal_factor · k``; 0: off) videos in temporal
    windows (:func:`tok.anysize.encode_any`); both are recorded in the header's
    ``source_options`` and ``tok decode`` follows ``window``.

    ``src`` is what :func:`tok.data.sources.open_source` accepts; ``fps``
    resamples videos; ``limit`` keeps the first N items (0: all); ``threads`` sets
    torch's CPU threads (0: leave them). A discrete tokenizer writes token files of
    int ``(N, *grid, S)``; a continuous one writes latent files of its latent means,
    ``(N, *grid, l)``, stored as ``latent_dtype`` (``"float32"``, the default,
    ``"float16"`` or ``"bfloat16"``; :data:`tok.tokens.LATENT_DTYPES`). Returns a
    summary: ``items`` (rows in the folder), ``skipped`` (source items left out),
    ``shards``, ``resumed`` (shards already done before this call), ``grid``, ``kind``
    (``"tokens"`` or ``"latents"``) and ``streams`` for tokens, ``latent_dim`` and
    ``dtype`` for latents. Raises :class:`TokError` subclasses naming the problem
    (:class:`ConfigError` for ``latent_dtype`` with a discrete tokenizer,
    :class:`TokenFileError` for latents that are not finite in their dtype, which are
    never written); nothing the user had is changed.

    Under torchrun (``WORLD_SIZE`` > 1) each rank encodes every ``WORLD_SIZE``-th
    pending shard (rank r: shards r, r + W, …) and writes its files; rank 0 alone
    writes the manifest, adopting the other ranks' shards at the end (and on any rerun,
    so a killed encode resumes without redoing a finished shard). Forward batches are
    cut from each shard's start, ``batch_size`` rows at a time, whichever process
    encodes it, so with the same thread count every byte equals a one-process encode.
    On CUDA, rank r computes on ``cuda:LOCAL_RANK``.
    """
    if shard_size < 1 or batch_size < 1:
        raise DatasetError("--shard-size and --batch-size must be at least 1")
    if limit < 0:
        raise DatasetError(f"--limit must be 0 (all) or a positive number, got {limit}")
    if threads < 0:
        raise DatasetError(f"--threads must be 0 (torch's default) or more, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    check_writable(out, what="tokens")  # before the encoding, not after it
    with process_group(resolve_device(device, option="--device")) as where:
        model = Tokenizer.load(tokenizer, map_location=where)
        _check_codes(model, latent_dtype)  # before any work
        if fps is not None and len(model.input_shape) != 4:
            raise DatasetError(
                "--fps applies to video tokenizers only; this tokenizer takes images"
            )
        if resize == "keep" or tile or window:
            check_tiling(model, tile=tile, overlap=overlap, window=window)  # before any work
        with folder_lock(out), walk_once():  # one writer per token folder (rank 0's lock)
            return _encode(src, Path(out), model, where, tokenizer, split=split,
                           shard_size=shard_size, batch_size=batch_size, resize=resize,
                           fps=fps, limit=limit, progress=progress,
                           latent_dtype=latent_dtype,
                           tiling={"tile": tile, "overlap": overlap, "window": window})  # fmt: skip


def _tiling_options(tiling: dict[str, Any]) -> dict[str, Any]:
    """The tiling options that change the tokens, as ``source_options`` records them
    (none when off, so files encoded without them stay as before)."""
    return {k: v for k, v in tiling.items() if v}


def _check_codes(model: Tokenizer, latent_dtype: str | None) -> None:
    """Refuse what the tokenizer's codes cannot be stored as: a codebook too large for
    token files, ``--latent-dtype`` with a discrete tokenizer or an unknown dtype."""
    if not model.continuous:
        if latent_dtype is not None:
            raise ConfigError(
                f"--latent-dtype applies to continuous tokenizers only; this one is discrete "
                f"(quantizer {model.bottleneck_name!r}) and stores integer tokens"
            )
        token_dtype(model.quantizer.codebook_sizes)
    elif latent_dtype is not None and latent_dtype not in LATENT_DTYPES:
        raise ConfigError(
            f"--latent-dtype must be {', '.join(LATENT_DTYPES)}, got {latent_dtype!r}"
        )


def _encode(
    src: str, out: Path, model: Tokenizer, where: torch.device, tokenizer: Any, *,
    split: str, shard_size: int, batch_size: int, resize: str, fps: float | None,
    limit: int, progress: bool, latent_dtype: str | None, tiling: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    keep = resize == "keep"
    with warnings.catch_warnings():
        if not is_main():  # rank 0 names the files the listing skips, once
            warnings.simplefilter("ignore")
        options: dict[str, Any] = {"resize": resize, "fps": fps}
        if keep:  # each item's own size and length, not the tokenizer's
            options |= {"size": None, "frames": None}
        dataset, split = open_source(
            src, input_shape=model.input_shape, split=split, options=options
        )
        keys = dataset.keys(split)
        if not is_main():
            dataset.report_skipped(split)  # forgotten here; decoding skips are reported
    keys = keys[:limit] if limit else keys
    _check_shape(src, tokenizer, tuple(dataset.input_shape()), model, keep=keep)
    header = header_for_tokenizer(
        model,
        dtype=latent_dtype,
        path=str(Path(tokenizer).resolve()),
        source=src,
        source_options={"resize": resize, "fps": fps, **_tiling_options(tiling)},
        ragged=keep,
    )
    check_shard_headers(header, keys, shard_size)  # before any encoding
    if is_distributed() and not keys:
        raise dataset.none_readable(split, 0)
    existed = out.exists()
    fresh = not existed or (out.is_dir() and not any(out.iterdir()))
    tdir = _token_dir(out, header, keys, shard_size)
    plan = tdir.pending() if tdir else list(enumerate(plan_shards(keys, shard_size)))
    resumed = (tdir.num_shards if tdir else len(plan)) - len(plan)
    held: list[tuple[int, Any, list[str], list[str], list | None]] = []
    mine = plan[rank() :: world_size()]  # rank r: pending shards r, r + W, …
    for index, shard_keys in tqdm(
        mine, desc="encode", unit="shard", disable=not progress or not is_main()
    ):
        if keep:
            tokens, sizes, got = _encode_each(src, tokenizer, dataset, split, shard_keys,
                                              model, where, tiling)  # fmt: skip
        else:
            samples = dataset.read(split, shard_keys)
            if samples.keys:
                _check_shape(src, tokenizer, tuple(samples.images.shape[1:]), model)
            rows = [
                _encode_batch(model, samples.floats(slice(i, i + batch_size)).to(where), tiling)
                for i in range(0, len(samples), batch_size)
            ]
            tokens = torch.cat(rows) if rows else header.empty()
            sizes, got = None, samples.keys
        read = set(got)
        shard = (index, tokens, got, [k for k in shard_keys if k not in read], sizes)
        if tdir is None and not got:  # alone, nothing readable yet: no folder yet
            held.append(shard)
            continue
        if tdir is None:
            tdir = TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)
        try:
            for i, t, kept, skipped, sz in [*held, shard]:
                tdir.write_shard(i, t, keys=kept, skipped=skipped, record=is_main(), sizes=sz)
        except FileAccessError as exc:  # a full disk: say what is kept
            done = tdir.num_shards - len(tdir.pending())  # this process knows its own only
            kept = (
                "the shards written so far"
                if is_distributed()
                else f"{done} of {tdir.num_shards} shards"
            )
            raise FileAccessError(
                f"{exc}; {kept} are written and kept, and the same command finishes the rest"
            ) from exc
        held = []
    dataset.report_skipped(split)
    if is_distributed():
        barrier()  # every rank's shards are written
        if is_main():  # adopt them into the manifest
            tdir = TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)
            if fresh and not tdir.manifest.num_items:  # nothing readable: leave nothing
                for written in out.iterdir():  # the manifest and empty shards
                    written.unlink()
                if not existed:
                    out.rmdir()
                tdir = None
    if tdir is None:
        raise dataset.none_readable(split, len(keys))
    summary = {
        "items": tdir.manifest.num_items,
        "skipped": len(tdir.skipped()),
        "shards": tdir.num_shards,
        "resumed": resumed,
        "grid": "ragged" if keep else "x".join(str(g) for g in model.grid),
        "kind": header.kind,
    }
    if header.kind == "latents":
        return {**summary, "latent_dim": header.latent_dim, "dtype": header.dtype}
    return {**summary, "streams": header.num_streams}


def _encode_batch(model: Tokenizer, x: torch.Tensor, tiling: dict[str, Any]) -> torch.Tensor:
    """Codes of a batch of the tokenizer's own size, tiled or windowed when asked."""
    if tiling["tile"] or tiling["window"]:
        return encode_any(model, x, **tiling).cpu()
    return model.encode(x).cpu()


def _encode_each(
    src: str, run: Any, dataset: Any, split: str, keys: list[str], model: Tokenizer,
    where: torch.device, tiling: dict[str, Any],
) -> tuple[list[torch.Tensor], list[list[int]], list[str]]:  # fmt: skip
    """``--resize keep``: each item read and encoded alone, at its own size (so a row's
    tokens are those of encoding that item by itself); its rows, input sizes and the keys
    that read."""
    rows, sizes, got = [], [], []
    for key in keys:
        samples = dataset.read(split, [key])
        if not samples.keys:  # unreadable: skipped
            continue
        x = samples.images  # uint8: encode_any converts a window at a time
        _check_shape(src, run, tuple(x.shape[1:]), model, keep=True)
        rows.append(encode_any(model, x.to(where), **tiling)[0].cpu())
        sizes.append(list(x.shape[2:]))
        got.append(key)
    return rows, sizes, got


#: ragged videos in ``preview.gif``: at most this many pixels per side (every k-th pixel)
PREVIEW_SIDE = 256


def _show(shown: list[torch.Tensor], row: torch.Tensor, *, ragged: bool) -> None:
    """Add a decoded video to the preview: as it is, or for ragged rows (any size) every
    k-th pixel, at most :data:`PREVIEW_SIDE` per side, and only the first one's shape."""
    if ragged:
        k = -(-max(row.shape[-2:]) // PREVIEW_SIDE)
        row = row[..., ::k, ::k]
    if not shown or row.shape == shown[0].shape:
        shown.append(row)


def _token_dir(out: Path, header: Header, keys: list[str], shard_size: int) -> TokenDir | None:
    """The token folder to write. Alone: ``out`` resumed if it holds anything (or
    refused now), else ``None`` (created with the first readable shard). Under
    torchrun: rank 0 creates or resumes it, then the others join it; when rank 0
    cannot, every rank stops (rank 0 says why: :func:`tok.distributed.leading`)."""
    if not is_distributed():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):  # resume, or refuse
            return TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)
        return None
    if not is_main():
        follow(out)
        return TokenDir.joined(out, keys=keys, shard_size=shard_size)
    with leading() as ready:
        tdir = TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)
        ready()
    return tdir


def _made_by(header: Header) -> str:
    """What a header's rows are and what made them, for a refusal."""
    if header.kind == "latents":
        return f"latents ({header.dtype}, continuous bottleneck {header.bottleneck!r})"
    return f"tokens (quantizer {header.quantizer!r})"


def _makes(model: Tokenizer) -> str:
    if model.continuous:
        return f"continuous (bottleneck {model.bottleneck_name!r}) and decodes latents only"
    return f"discrete (quantizer {model.bottleneck_name!r}) and decodes tokens only"


def _row_path(out: Path, key: str) -> Path:
    """Where the file of the row ``key`` goes (without its suffix), refusing escapes;
    ``a/./b`` and ``a/b`` are one path."""
    parts = Path(key).parts
    if not parts or Path(key).is_absolute() or ".." in parts:
        raise TokenFileError(f"row key {key!r} is not a safe relative file name")
    return out.joinpath(*parts)


def decode_files(
    tokens: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    force: bool = False,
    batch_size: int = 256,
    video_format: str = "mp4",
    fps: float = 8.0,
    progress: bool = True,
    device: str = "cpu",
    tile: int = 0,
    overlap: int | None = None,
) -> dict[str, Any]:
    """Decode a token file or folder into ``out``: ``KEY.png`` per image row, or for a video
    tokenizer ``KEY.mp4`` (``video_format = "gif"``: ``KEY.gif``) per row at ``fps`` frames
    per second plus ``preview.gif``, the first :data:`PREVIEW_VIDEOS` videos side by side.

    The tokenizer is the run folder ``tokenizer`` or, when omitted, the one recorded
    in the tokens. Tokens from a different tokenizer (another weights sha256) are
    refused unless ``force``. A file or folder of latents (from a continuous tokenizer)
    decodes the same way, each row exactly as ``Tokenizer.decode`` decodes the latents
    read back as float32; latents given to a discrete tokenizer, or tokens to a
    continuous one, raise :class:`TokenizerMismatchError` whatever ``force``. ``out``
    must be new or empty.

    Ragged rows (``tok encode --resize keep``) are decoded one at a time and cropped back
    to the size each was encoded from (the preview shows those of the first one's size,
    at most :data:`PREVIEW_SIDE` pixels per side); rows encoded in windows (``source_options``
    ``window``) are decoded window by window (:func:`tok.anysize.decode_any`). ``tile``
    (pixels; 0: off) decodes images in tiles whose ``overlap`` is blended, for images too
    large to decode at once.

    Returns ``items`` (rows written), ``kind`` (``"images"`` or ``"videos"``),
    ``format`` (``"png"``, ``"mp4"`` or ``"gif"``) and ``preview`` (the
    preview's path, or ``None`` for images).
    """
    if video_format not in VIDEO_FORMATS:
        raise ConfigError(f"--video-format must be mp4 or gif, got {video_format!r}")
    if not fps or fps <= 0:
        raise ConfigError(f"--fps must be positive, got {fps!r}")
    check_writable(out, what="images")  # before the decoding
    where = resolve_device(device, option="--device")
    tf = load_tokens(tokens)
    header: Header = tf.header
    tokenizer = tokenizer or header.tokenizer_path
    if not tokenizer:
        raise TokenFileError(f"{tokens} does not record its tokenizer; pass --tokenizer RUN")
    model = Tokenizer.load(tokenizer, map_location=where)
    if (header.kind == "latents") != model.continuous:  # --force cannot bridge that
        raise TokenizerMismatchError(
            f"{tokens} holds {_made_by(header)}, but the tokenizer in {tokenizer} is "
            f"{_makes(model)}; pass the tokenizer that made them with --tokenizer"
        )
    if not header.same_tokenizer(model.weights_sha256 or "") and not force:
        raise TokenizerMismatchError(
            f"{tokens} was made by a tokenizer with weights sha256 {header.tokenizer_sha256[:12]}…, "
            f"but {tokenizer} has {str(model.weights_sha256)[:12]}…; pass the right --tokenizer, "
            f"or --force to decode anyway"
        )
    out = Path(out)
    with folder_lock(out):  # one writer per output folder, for the whole decode
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise OutputDirError(
                f"output folder {out} already exists and is not empty; tok never overwrites files — choose a new --out"
            )
        videos = len(model.input_shape) == 4
        fmt = video_format if videos else "png"
        stems = [_row_path(out, key) for key in tf.keys]
        seen: dict[Path, str] = {}
        for key, stem in zip(tf.keys, stems, strict=True):
            if stem in seen:  # two rows, one file: refuse before writing either
                raise TokenFileError(
                    f"{tokens}: rows {seen[stem]!r} and {key!r} would both be written to "
                    f"{stem.relative_to(out)}.{fmt}"
                )
            seen[stem] = key
        preview = None
        if videos:
            taken = {s.with_name(f"{s.name}.{fmt}") for s in stems}
            preview = out / "preview.gif"
            while preview in taken:  # a row's own key is "preview"
                preview = preview.with_name("_" + preview.name)
        if tile or overlap is not None:
            check_tiling(model, tile=tile, overlap=overlap, window=0)
        window = int((header.source_options or {}).get("window") or 0)
        plain = not (header.ragged or tile or window)
        size = model.input_shape[1:]
        out.mkdir(parents=True, exist_ok=True)
        shown: list[torch.Tensor] = []
        step = batch_size if plain else 1  # ragged rows: one at a time, each its own size
        for start in tqdm(
            range(0, len(tf.keys), step), desc="decode", unit="batch", disable=not progress
        ):
            if plain:
                rows = to_uint8(model.decode(tf.tokens[start : start + step].to(where)).cpu())
            else:
                if header.ragged:
                    size = tuple(int(v) for v in tf.sizes[start])
                codes = tf.row(start)[None].to(where)
                y = decode_any(model, codes, size=size, tile=tile, overlap=overlap, window=window)
                rows = to_uint8(y.cpu())
            for i, (row, stem) in enumerate(zip(rows, stems[start:], strict=False)):
                try:
                    write_item(stem, row, video_format=fmt, fps=fps)
                except FileAccessError as exc:  # a full disk: what is there, what to do
                    raise FileAccessError(
                        f"{exc}; {start + i} of {len(stems)} files were written to {out}: "
                        "remove that folder (or choose another --out) and decode again"
                    ) from exc
                if videos and len(shown) < PREVIEW_VIDEOS:
                    _show(shown, row, ragged=header.ragged)
        if preview is not None and shown:
            save_preview(preview, torch.stack(shown), fps=fps)
        return {
            "items": len(tf.keys),
            "kind": "videos" if videos else "images",
            "format": fmt,
            "preview": preview if shown else None,
        }
