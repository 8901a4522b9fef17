"""Images and videos as files and as pictures: reading, writing and laying out, in one place.

Reading (uint8 tensors):

- :func:`probe_image` / :func:`probe_video`: height and width from the file's
  header — no pixel is decoded, so a folder can be checked before it is read
  (an image's as shown, after its EXIF orientation);
- :func:`read_image` (``(c, h, w)``, decoded by Pillow: PNG, JPEG, BMP, GIF,
  TIFF, WebP in any bit depth and mode, by the policy in ``docs/media.md`` —
  upright by EXIF orientation, first frame, 16 bits scaled by 65535, alpha
  composited over white, Pillow's CMYK→RGB, ITU-R 601-2 luma for gray) and
  :func:`read_video` (``(t, 3, h, w)``, decoded by PyAV, optionally resampled
  to a frame rate by nearest timestamp).

Writing (atomically, see :mod:`tok._io`):

- :func:`write_png`, :func:`write_video` (mp4: H.264; GIF: PyAV's encoder, the
  only GIF writer in tok), and :func:`write_item`, which picks by the item's
  rank: ``(c, h, w)`` → ``KEY.png``, ``(c, t, h, w)`` → ``KEY.mp4``/``KEY.gif``.

Layout — one side-by-side layout for every picture tok draws from pixels: tiles
in white-padded rows under a label strip, upscaled by pixel repetition, so a
tile holds the input's pixels exactly (:func:`tile_origin` finds one):

- :func:`save_comparison`: originals above their reconstructions —
  ``recon.png`` for images, or ``recon.gif`` (animated) plus
  ``recon_frames.png`` (one video's frames) for videos: chosen from the data;
- :func:`save_preview`: videos side by side, animated (``tok decode``'s preview).

Axis legend: ``n`` items, ``c`` channels, ``t`` frames, ``h w`` pixels.

Why this module is longer than 500 lines: images and videos are read,
written and drawn in one place, so the two never drift into near-copies of
each other (one GIF writer, one layout); the file has three plain sections.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._io import atomic_path
from .errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VIDEO_FORMATS",
    "MediaReadError",
    "MediaInfo",
    "probe_image",
    "read_image",
    "probe_video",
    "read_video",
    "write_png",
    "write_video",
    "write_item",
    "to_uint8",
    "PADDING",
    "LABEL_HEIGHT",
    "PAIR_GAP",
    "RECON_LABEL",
    "tile_origin",
    "layout",
    "save_comparison",
    "save_preview",
    "quiet_torchvision_io",
    "reason",
]

#: what an image folder reads; a file is decoded by what it holds, not by its name
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".gif", ".webm", ".mkv", ".mov")
VIDEO_FORMATS = ("mp4", "gif")

PADDING = 2  # white padding around each tile, in input pixels (scaled with the picture)
LABEL_HEIGHT = 18  # white label strip above the tiles, in output pixels
PAIR_GAP = 6  # white rows between two blocks of tiles, in output pixels
RECON_LABEL = "top: original \u00b7 bottom: reconstruction"
COMPARISON_FPS = 8.0  # frames per second of recon.gif

_TV_IO_DEPRECATION = r"The image decoding and encoding capabilities of TorchVision are deprecated"


class MediaReadError(DatasetError):
    """A file cannot be read as an image or a video; ``reason`` says why in a few words."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class MediaInfo:
    """What a file's header says: ``height`` and ``width`` in pixels."""

    height: int
    width: int


@contextlib.contextmanager
def quiet_torchvision_io() -> Iterator[None]:
    """Silence the DeprecationWarning torchvision >= 0.29 raises on *every* image decode/encode
    (it points at TorchCodec; nothing a user of tok can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_IO_DEPRECATION, category=DeprecationWarning)
        yield


def reason(exc: BaseException) -> str:
    """A decoder error in a few words: without torchvision's C++ source location,
    FFmpeg's errno or the file name (messages name the file themselves)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\S+, \S+:\d+, ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '[^']*'$", "", text)
    return text if len(text) <= 80 else text[:77] + "..."


def _opened(source: str | Path | bytes) -> str | io.BytesIO:
    """What Pillow and PyAV open for ``source``: a path as a string, bytes (a member of a
    ``.tar`` shard) as an in-memory file."""
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def _name(source: str | Path | bytes, name: str | None = None, kind: str = "video") -> str:
    """How messages name ``source``: ``name`` when given, else its path (``"video data"``,
    ``"image data"`` for bytes)."""
    if name is not None:
        return name
    return f"{kind} data" if isinstance(source, bytes) else str(source)


def to_uint8(images: Tensor) -> Tensor:
    """Float pixels in ``[0, 1]`` → uint8 (rounded), the form image files hold."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


# images -------------------------------------------------------------------------------


#: the only Pillow decoders a file is offered to (a JPEG holding several pictures, MPO,
#: opens as JPEG): nothing else — EPS, whose decoder runs Ghostscript, among others — is tried
_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
_FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF or WebP"
#: EXIF orientation → the Pillow transpose that shows the picture upright (as
#: ``PIL.ImageOps.exif_transpose``); 5–8 swap height and width
_UPRIGHT = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
#: Pillow's modes for 16-bit gray (PNG, TIFF; "I" also from older Pillows): scaled by 65535
_GRAY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: ITU-R 601-2 luma, as Pillow's RGB → "L"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: what Pillow raises on a file it cannot decode (struct.error, KeyError…: malformed TIFF tags)
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)


@contextlib.contextmanager
def _open_image(source: str | Path | bytes, name: str) -> Iterator:
    """The Pillow image of ``source`` (a path, or the file's bytes), its header read; whatever
    goes wrong in the block — a foreign format, a decompression bomb, broken data — is a
    :class:`MediaReadError` naming ``name``.

    A picture of more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused (Pillow
    itself only warns up to twice that): set that to change the limit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_opened(source), formats=_IMAGE_FORMATS) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        limit = Image.MAX_IMAGE_PIXELS
        raise MediaReadError(
            name, f"refused: over {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise MediaReadError(name, f"cannot decode: not a {_FORMAT_NAMES} image") from None
    except _DECODE_ERRORS as exc:
        raise MediaReadError(name, f"cannot decode: {reason(exc)}") from None


def _orientation(image) -> int:
    """The EXIF orientation (1–8) tok applies to an opened image, from what precedes its
    pixels: the EXIF block (JPEG, WebP, a PNG's eXIf chunk before its pixels) or XMP; 1 when
    there is none or it is malformed (as image viewers do), and for TIFF, whose orientation
    Pillow applies itself (``Image.open`` reports the upright size, ``load`` turns the pixels)."""
    from PIL import Image

    if image.format == "TIFF":
        return 1
    try:
        # the base method: PngImageFile.getexif decodes every pixel to look behind them
        value = Image.Image.getexif(image).get(0x0112, 1)
    except Exception:  # malformed metadata must not make a readable picture unreadable
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _shown_size(image) -> tuple[int, int, int]:
    """``(orientation, width, height)`` of an opened image, the size as shown (upright)."""
    orientation = _orientation(image)
    width, height = image.size
    return (orientation, height, width) if orientation >= 5 else (orientation, width, height)


def _samples(image, channels: int) -> tuple[np.ndarray, bool]:
    """Pillow's part of decoding: a loaded, upright image as ``(h, w, k)`` and whether its last
    layer is alpha — uint8 with ``k = channels`` (8-bit opaque pictures, converted by Pillow:
    palette and CMYK to RGB, RGB to gray by luma) or float32 in ``[0, 1]`` (16-bit and float
    gray; anything with alpha or a transparent colour, as gray or RGB plus alpha)."""
    mode = image.mode
    if mode in _GRAY_16 or mode == "F":
        gray = np.array(image, dtype=np.float32)
        if mode == "F":
            np.nan_to_num(gray, copy=False)
        else:
            gray /= 65535
        return gray[..., None], False
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        gray = mode in ("1", "L", "LA", "La")
        layers = np.array(image.convert("LA" if gray else "RGBA"), dtype=np.float32)
        layers /= 255
        return layers, True
    if mode not in ("1", "L", "RGB"):
        image = image.convert("RGB")
    array = np.array(image.convert("L" if channels == 1 else "RGB"))
    return (array[..., None] if array.ndim == 2 else array), False


def _to_uint8(samples: np.ndarray, alpha: bool, channels: int) -> np.ndarray:
    """:func:`_samples`' float pixels composited over white, brought to ``channels`` (gray
    replicated, RGB by luma) and rounded — once — to uint8 ``(h, w, channels)``."""
    x = samples
    if alpha:
        a = x[..., -1:]
        x = x[..., :-1] * a
        x += 1 - a
    if x.shape[-1] == 3 and channels == 1:
        x = (x @ _LUMA)[..., None]
    x *= 255
    u8 = np.rint(np.clip(x, 0, 255, out=x), out=x).astype(np.uint8)
    return np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 and channels == 3 else u8


def probe_image(source: str | Path | bytes, *, name: str | None = None) -> MediaInfo:
    """The size of an image (a path, or the file's bytes) as shown (after its EXIF
    orientation) from its header, without decoding pixels.

    A PNG's chunk checksums are verified too (which finds truncated files). Raises
    :class:`MediaReadError` for anything that is not a PNG, JPEG, BMP, GIF, TIFF or
    WebP image tok can open (by content, whatever its name), and for a picture of more
    than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels; the error names ``name`` (default: the
    path, or ``"image data"`` for bytes).
    """
    with _open_image(source, _name(source, name, "image")) as image:
        _, width, height = _shown_size(image)
        if image.format == "PNG":
            image.verify()
    return MediaInfo(height=height, width=width)


def read_image(source: str | Path | bytes, *, channels: int, name: str | None = None) -> Tensor:
    """Decode an image file (a path, or the file's bytes) into uint8 ``(channels, h, w)``,
    ``channels`` 1 (gray) or 3 (RGB).

    PNG, JPEG, BMP, GIF, TIFF and WebP in any bit depth and mode, by the policy of
    ``docs/media.md``: upright by its EXIF orientation; the first frame of a multi-frame
    file; 16-bit samples scaled by 65535 and rounded once, to 8 bits (what the
    tokenizers consume: ``uint8 / 255`` is then within half a step of ``value / 65535``);
    alpha and transparent colours composited over white; CMYK, palette and other modes
    converted to RGB by Pillow; gray replicated to RGB; RGB to gray by ITU-R 601-2 luma
    (as Pillow's ``"L"``).

    Raises :class:`MediaReadError` (naming ``name`` — default: the path, or ``"image
    data"`` for bytes — and the reason) when the file cannot be decoded — broken data
    never crashes the process — and ``ValueError`` for ``channels`` other than 1 or 3.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    name = _name(source, name, "image")
    with _open_image(source, name) as image:
        orientation, width, height = _shown_size(image)
        image.load()
        if orientation in _UPRIGHT:
            image = image.transpose(Image.Transpose[_UPRIGHT[orientation]])
        if image.size != (width, height):  # e.g. Pillow 13 on an uncompressed turned TIFF
            got = f"{image.size[1]}x{image.size[0]}"
            raise MediaReadError(
                name, f"cannot decode: Pillow gave {got} pixels, its header {height}x{width}"
            )
        samples, alpha = _samples(image, channels)
    if samples.dtype != np.uint8:
        samples = _to_uint8(samples, alpha, channels)
    # numpy's transpose: torch's permute(...).contiguous() of uint8 is ~100x slower here
    return torch.from_numpy(np.ascontiguousarray(samples.transpose(2, 0, 1)))


def write_png(path: str | Path, image: Tensor) -> Path:
    """Write uint8 ``(c, h, w)`` (c = 1 or 3) as a PNG, atomically; return the path."""
    from torchvision.io import encode_png

    with quiet_torchvision_io():
        data = encode_png(image.cpu()).numpy().tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# videos -------------------------------------------------------------------------------


def _open_video(source: str | Path | bytes):
    import av

    return av.open(_opened(source), metadata_errors="ignore")


def _quarter_turns(frame) -> int:
    """How many quarter turns counterclockwise show ``frame`` as players do: from its display
    matrix (PyAV's ``VideoFrame.rotation``, degrees counterclockwise; FFmpeg's
    ``autorotate`` turns a frame of rotation -90 clockwise). 0 without one."""
    degrees = getattr(frame, "rotation", 0) if frame is not None else 0
    return round((degrees or 0) / 90) % 4


def _first_frame(container, stream):
    """The first decodable frame of ``stream``, or ``None`` (decoding problems are for
    :func:`read_video` to report)."""
    import av

    try:
        return next(container.decode(stream), None)
    except (av.error.FFmpegError, ValueError, RuntimeError, EOFError):
        return None


def probe_video(source: str | Path | bytes) -> MediaInfo:
    """The frame size of a video (a path, or its bytes) as players show it: from its
    container header, turned by the first frame's display matrix (a portrait phone clip
    stored landscape with rotation -90 is portrait).

    Raises :class:`MediaReadError` when it cannot be opened or has no video stream.
    """
    import av

    try:
        with _open_video(source) as container:
            if not container.streams.video:
                raise MediaReadError(_name(source), "no video stream")
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            if _quarter_turns(_first_frame(container, stream)) % 2:  # shown upright: turned
                height, width = width, height
    except MediaReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise MediaReadError(_name(source), f"cannot decode: {reason(exc)}") from None
    if not height or not width:
        raise MediaReadError(_name(source), "no frame size in its header")
    return MediaInfo(height=height, width=width)


def _nearest(times: list[float], fps: float, count: int) -> list[int]:
    """For output times ``k / fps`` (``k < count``), the index of the nearest source time."""
    src = torch.tensor(times, dtype=torch.float64)
    want = torch.arange(count, dtype=torch.float64) / fps
    right = torch.searchsorted(src, want).clamp(max=len(times) - 1)
    left = (right - 1).clamp(min=0)
    take_left = (want - src[left]) <= (src[right] - want) + 1e-9
    return torch.where(take_left, left, right).tolist()


def _scaled(frame, short_side: int | None) -> dict:
    """PyAV's ``to_ndarray`` arguments that scale ``frame`` to ``short_side`` (none: as is)."""
    if short_side is None:
        return {}
    scale = short_side / min(frame.height, frame.width)
    return {
        "width": max(1, round(frame.width * scale)),
        "height": max(1, round(frame.height * scale)),
        "interpolation": "AREA",
    }


def read_video(
    source: str | Path | bytes,
    *,
    fps: float | None = None,
    frames: int | None = None,
    short_side: int | None = None,
) -> Tensor:
    """Decode a video file (a path, or its bytes) into uint8 RGB frames ``(t, 3, h, w)``,
    upright as players show them: a display matrix (phone clips) is applied, as EXIF
    orientation is for images; flips in it are not.

    ``fps`` resamples by nearest timestamp (``None``: the frames as stored);
    ``frames`` stops after that many output frames (fewer are returned when
    the video is shorter); ``short_side`` scales every frame as it is decoded
    (FFmpeg's area filter, aspect ratio kept, each side rounded to whole pixels) so
    its shorter side is that many pixels — a long 720p clip then never sits in
    memory at full size. Raises :class:`MediaReadError` naming the file and
    the reason when the data is not a decodable video.
    """
    import av

    arrays: list[np.ndarray] = []
    times: list[float] = []
    last_duration, rate = 0.0, None
    try:
        with _open_video(source) as container:
            if not container.streams.video:
                raise MediaReadError(_name(source), "no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    t = len(arrays) / (rate or 1.0)
                if times and t <= times[-1]:  # broken timestamps: fall back to the frame count
                    t = times[-1] + 1.0 / (rate or 1.0)
                array = frame.to_ndarray(format="rgb24", **_scaled(frame, short_side))
                turns = _quarter_turns(frame)  # as players show it (the display matrix)
                arrays.append(np.rot90(array, turns) if turns else array)
                times.append(t)
                if frame.duration and frame.time_base:
                    last_duration = float(frame.duration * frame.time_base)
                # enough frames: the clip's, or (resampling) one past its last output time
                if frames is not None and (
                    len(arrays) >= frames if fps is None else t - times[0] > frames / fps
                ):
                    break
    except MediaReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise MediaReadError(_name(source), f"cannot decode: {reason(exc)}") from None
    if not arrays:
        raise MediaReadError(_name(source), "no frames")
    video = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if fps is None:
        return video if frames is None else video[:frames]
    rel = [t - times[0] for t in times]
    if not last_duration:
        last_duration = (rel[-1] / (len(rel) - 1)) if len(rel) > 1 else 1.0 / (rate or fps)
    count = max(1, int(np.floor((rel[-1] + last_duration) * fps + 1e-6)))
    if frames is not None:
        count = min(count, frames)
    return video[_nearest(rel, fps, count)]


def _rate(fps: float) -> Fraction:
    if not fps or fps <= 0:
        raise DatasetError(f"fps must be positive, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _gif_frame(frame: np.ndarray):
    """One RGB frame ``(h, w, 3)`` as a PyAV pal8 frame with its own adaptive palette."""
    import av
    from PIL import Image

    image = Image.fromarray(frame).quantize(
        256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    palette = np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[:, 0] = 255
    argb[: len(palette), 1:] = palette
    return av.VideoFrame.from_ndarray((np.asarray(image), argb), format="pal8")


def write_video(
    path: str | Path, frames: Tensor, *, fps: float = 8.0, format: str | None = None
) -> Path:
    """Write uint8 frames ``(t, c, h, w)`` (c = 1 or 3) to ``path`` atomically; return the path.

    ``format`` is ``"mp4"`` (H.264 via libx264, yuv420p when height and width
    are even — what every player shows — else yuv444p; lossy) or ``"gif"``
    (lossless when the frames are gray, RGB or not; else one 256-colour
    adaptive palette per frame); default: the path's suffix.
    """
    import av

    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in VIDEO_FORMATS:
        raise DatasetError(f"cannot write {path}: video format must be mp4 or gif, got {fmt!r}")
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise DatasetError(
            f"cannot write {path}: frames must be uint8 (t, 1 or 3, h, w), "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    if fmt == "gif" and frames.shape[1] == 3 and bool((frames == frames[:, :1]).all()):
        frames = frames[:, :1]  # gray pictures drawn in RGB: lossless as a gray GIF
    t, c, h, w = frames.shape
    gray = c == 1
    array = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), "w", format=fmt)
        try:
            if fmt == "mp4":
                stream = container.add_stream("libx264", rate=_rate(fps))
                stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
                stream.options = {"crf": "18"}
            else:
                stream = container.add_stream("gif", rate=_rate(fps))
                stream.pix_fmt = "gray" if gray else "pal8"
            stream.width, stream.height = w, h
            for frame in array:
                if fmt == "gif" and not gray:
                    vf = _gif_frame(frame)
                elif gray and fmt == "gif":
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., 0]), "gray")
                else:
                    rgb = np.repeat(frame, 3, axis=-1) if gray else frame
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return path


def write_item(
    stem: str | Path, item: Tensor, *, video_format: str = "mp4", fps: float = 8.0
) -> Path:
    """Write one decoded item, uint8: an image ``(c, h, w)`` as ``stem.png``, a video
    ``(c, t, h, w)`` as ``stem.mp4`` or ``stem.gif`` (``video_format``). Returns the path."""
    stem = Path(stem)
    if item.ndim == 3:
        return write_png(stem.with_name(stem.name + ".png"), item)
    path = stem.with_name(f"{stem.name}.{video_format}")
    return write_video(path, item.transpose(0, 1), fps=fps, format=video_format)


# layout ---------------------------------------------------------------------------------


def _as_rgb(x: Tensor, name: str, ndim: int) -> Tensor:
    """``x`` with ``ndim`` axes, channels (axis 1) 1 or 3, as float RGB in ``[0, 1]`` on the CPU."""
    shape = "(N, C, H, W)" if ndim == 4 else "(N, C, T, H, W)"
    if not isinstance(x, Tensor) or x.dim() != ndim or x.shape[1] not in (1, 3):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a {shape} tensor with C 1 or 3, got {got}")
    if 0 in x.shape:
        raise ValueError(f"{name} is empty")
    x = x.detach().cpu().float().clamp(0, 1)
    return x.expand(-1, 3, *x.shape[2:]) if x.shape[1] == 1 else x


def _pair(originals: Tensor, reconstructions: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
    orig = _as_rgb(originals, "originals", ndim)
    rec = _as_rgb(reconstructions, "reconstructions", ndim)
    if orig.shape != rec.shape:
        raise ValueError(
            f"originals {tuple(originals.shape)} and reconstructions "
            f"{tuple(reconstructions.shape)} differ"
        )
    return orig, rec


def layout(blocks: list[Tensor], *, cols: int, label: str, scale: int = 2):
    """The one layout: each block ``(k, 3, h, w)`` (floats in ``[0, 1]``) as rows of ``cols``
    tiles with :data:`PADDING` white pixels around each, upscaled ``scale`` times by pixel
    repetition; blocks stacked :data:`PAIR_GAP` px apart under a :data:`LABEL_HEIGHT` px
    strip holding ``label``. Returns a PIL RGB image (:func:`tile_origin` finds a tile)."""
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    parts = []
    for block in blocks:
        grid = make_grid(block, nrow=cols, padding=PADDING, pad_value=1.0)
        u8 = to_uint8(grid).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        parts.append(Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy(), mode="RGB"))
    font = ImageFont.load_default(size=11)
    text_w = int(np.ceil(font.getlength(label)))
    width = max(max(p.width for p in parts), text_w + 8)
    height = LABEL_HEIGHT + sum(p.height for p in parts) + PAIR_GAP * (len(parts) - 1)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    text_y = (LABEL_HEIGHT - font.getbbox("Ag")[3]) // 2
    ImageDraw.Draw(image).text((4, text_y), label, font=font, fill=(110, 110, 110))
    y = LABEL_HEIGHT
    for p in parts:
        image.paste(p, (0, y))
        y += p.height + PAIR_GAP
    return image


def tile_origin(
    index: int,
    *,
    row: int = 0,
    height: int,
    width: int,
    cols: int,
    rows: int = 2,
    scale: int = 2,
) -> tuple[int, int]:
    """``(x, y)`` of the top-left output pixel of tile ``index`` in :func:`layout` whose
    blocks hold ``rows`` rows of ``cols`` tiles of ``height × width`` input pixels; ``row``
    picks the row inside a block (in a comparison: 0 original, 1 reconstruction)."""
    block, col = divmod(index, cols)
    block_h = rows * (height + PADDING) + PADDING
    y = LABEL_HEIGHT + block * (block_h * scale + PAIR_GAP)
    y += (PADDING + row * (height + PADDING)) * scale
    x = (PADDING + col * (width + PADDING)) * scale
    return x, y


def _save_png(image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _animate(path: Path, frames: list, fps: float) -> Path:
    stack = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames])
    return write_video(path, stack, fps=fps, format="gif")


def save_comparison(
    folder: str | Path,
    originals: Tensor,
    reconstructions: Tensor,
    *,
    cols: int = 8,
    videos: int = 4,
    scale: int = 2,
) -> list[Path]:
    """Draw originals above their reconstructions into ``folder``; return the files written.

    Images ``(n, c, h, w)`` (floats in ``[0, 1]``, c 1 or 3): ``recon.png``, ``cols``
    images a row, each row of originals above the row of their reconstructions.
    Videos ``(n, c, t, h, w)``: ``recon.gif``, the first ``videos`` side by side,
    animated (frame ``t`` of each), and ``recon_frames.png``, the first video's frames
    left to right. Tiles are at :func:`tile_origin` (``rows=2``).
    """
    folder = Path(folder)
    if isinstance(originals, Tensor) and originals.ndim == 5:
        orig, rec = _pair(originals, reconstructions, 5)
        orig, rec = orig[:videos], rec[:videos]
        frames = [
            layout(
                [torch.cat([orig[:, :, t], rec[:, :, t]])],
                cols=len(orig),
                label=RECON_LABEL,
                scale=scale,
            )
            for t in range(orig.shape[2])
        ]
        strip = layout(
            [torch.cat([orig[0].transpose(0, 1), rec[0].transpose(0, 1)])],
            cols=orig.shape[2],
            label="frames left to right \u00b7 " + RECON_LABEL,
            scale=scale,
        )
        return [
            _animate(folder / "recon.gif", frames, COMPARISON_FPS),
            _save_png(strip, folder / "recon_frames.png"),
        ]
    orig, rec = _pair(originals, reconstructions, 4)
    n, _, h, w = orig.shape
    cols = min(cols, n)
    blocks = []
    for start in range(0, n, cols):
        o, r = orig[start : start + cols], rec[start : start + cols]
        if len(o) < cols:  # white tiles fill the last block
            fill = orig.new_ones(cols - len(o), 3, h, w)
            o, r = torch.cat([o, fill]), torch.cat([r, fill])
        blocks.append(torch.cat([o, r]))
    image = layout(blocks, cols=cols, label=RECON_LABEL, scale=scale)
    return [_save_png(image, folder / "recon.png")]


def save_preview(path: str | Path, videos: Tensor, *, fps: float = 8.0, scale: int = 1) -> Path:
    """``videos`` uint8 ``(n, c, t, h, w)`` side by side in one row (the layout of
    :func:`layout`, one row per block), animated as a GIF at ``fps``; return the path."""
    x = _as_rgb(videos.float() / 255, "videos", 5)
    frames = [
        layout([x[:, :, t]], cols=len(x), label=f"{len(x)} decoded videos", scale=scale)
        for t in range(x.shape[2])
    ]
    return _animate(Path(path), frames, fps)
