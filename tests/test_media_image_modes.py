"""Image bit depth and modes (docs/media.md): every picture a user may have reaches the
tokenizer at the right scale, upright and with the tokenizer's channels.

Real files written by Pillow, read by :func:`tok.media.read_image` into 1 and 3 channels
and checked against the policy (values computed here from what was written, never by
asking Pillow to convert); one folder mixing them all through the real ``tok encode``; a
PNG whose compressed data is broken, which used to kill the process, in a subprocess.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tok_cli, tok_subprocess
from PIL import Image, ImageOps

from tok import media
from tok.media import MediaInfo, MediaReadError
from tok.models import Tokenizer
from tok.tokens import load_tokens

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, Pillow's "L"


@dataclass(frozen=True)
class Case:
    """A file written with Pillow and the picture the policy says it shows."""

    path: Path
    want: np.ndarray  # (h, w, 3) floats in [0, 1]: upright, composited over white
    gray: bool  # a gray source: 1 channel is its value, not luma of RGB
    mode: str  # Pillow's mode of the file as written (checks the file is what it claims)
    tol: int = 0  # uint8 steps allowed (lossy JPEG)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _u8(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _gray(v: np.ndarray, scale: float) -> np.ndarray:
    return np.repeat((v / scale)[..., None], 3, axis=-1)


def _over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = (alpha / 255)[..., None]
    return (color / 255) * a + (1 - a)


def _transparent_corner(alpha: np.ndarray) -> np.ndarray:
    """Alpha with a fully transparent, a fully opaque and a half-transparent pixel first."""
    alpha[0, :3] = (0, 255, 128)
    return alpha


# one writer per kind of file: (folder, height, width) -> Case ----------------------------


def png_8bit_gray(d: Path, h: int, w: int) -> Case:
    g = _u8(_rng(1), h, w)
    Image.fromarray(g, "L").save(d / "png-8bit-gray.png")
    return Case(d / "png-8bit-gray.png", _gray(g, 255), True, "L")


def _wide_gray(h: int, w: int) -> np.ndarray:
    v = _rng(2).integers(0, 65536, (h, w), dtype=np.uint16)
    v[0, :4] = (32768, 0, 65535, 257 * 100 + 128)  # mid grey, the ends, just under a half step
    return v


def png_16bit_gray(d: Path, h: int, w: int) -> Case:
    v = _wide_gray(h, w)
    Image.fromarray(v).save(d / "png-16bit-gray.png")
    return Case(d / "png-16bit-gray.png", _gray(v, 65535), True, "I;16")


def png_la(d: Path, h: int, w: int) -> Case:
    rng = _rng(3)
    g, a = _u8(rng, h, w), _transparent_corner(_u8(rng, h, w))
    g[0, 0] = 0  # black under full transparency: white by the policy, black if alpha were dropped
    Image.fromarray(np.dstack([g, a]), "LA").save(d / "png-la.png")
    return Case(d / "png-la.png", np.repeat(_over_white(g[..., None], a), 3, -1), True, "LA")


def png_rgb(d: Path, h: int, w: int) -> Case:
    rgb = _u8(_rng(4), h, w, 3)
    Image.fromarray(rgb, "RGB").save(d / "png-rgb.png")
    return Case(d / "png-rgb.png", rgb / 255, False, "RGB")


def png_rgba(d: Path, h: int, w: int) -> Case:
    rng = _rng(5)
    rgb, a = _u8(rng, h, w, 3), _transparent_corner(_u8(rng, h, w))
    rgb[0, 0] = 0
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(d / "png-rgba.png")
    return Case(d / "png-rgba.png", _over_white(rgb, a), False, "RGBA")


PALETTE = np.array([[200, 30, 40], [10, 150, 60], [20, 40, 220], [250, 240, 10]], np.uint8)


def _indices(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    idx = rng.integers(0, len(PALETTE), (h, w)).astype(np.uint8)
    idx[0, :4] = (0, 1, 2, 3)
    return idx


def _palette_image(idx: np.ndarray) -> Image.Image:
    image = Image.fromarray(idx, "P")
    image.putpalette(PALETTE.flatten().tolist())
    return image


def png_palette(d: Path, h: int, w: int) -> Case:
    idx = _indices(_rng(6), h, w)
    _palette_image(idx).save(d / "png-palette.png")
    return Case(d / "png-palette.png", PALETTE[idx] / 255, False, "P")


def png_palette_transparent(d: Path, h: int, w: int) -> Case:
    idx = _indices(_rng(7), h, w)
    _palette_image(idx).save(d / "png-palette-transparent.png", transparency=0)
    want = np.where((idx == 0)[..., None], 1.0, PALETTE[idx] / 255)  # index 0 → white
    return Case(d / "png-palette-transparent.png", want, False, "P")


CMYK_BLOCKS = [  # (CMYK ink, the RGB it shows)
    ((255, 0, 0, 0), (0, 255, 255)),
    ((0, 255, 0, 0), (255, 0, 255)),
    ((0, 0, 255, 0), (255, 255, 0)),
    ((0, 0, 0, 255), (0, 0, 0)),
]


def jpeg_cmyk(d: Path, h: int, w: int) -> Case:
    """Four uniform quadrants of pure inks (a lossy format: values within a few steps)."""
    cmyk, want = np.zeros((h, w, 4), np.uint8), np.zeros((h, w, 3))
    quads = [(slice(0, h // 2), slice(0, w // 2)), (slice(0, h // 2), slice(w // 2, w))]
    quads += [(slice(h // 2, h), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))]
    for (ink, rgb), quad in zip(CMYK_BLOCKS, quads, strict=True):
        cmyk[quad], want[quad] = ink, np.array(rgb) / 255
    Image.fromarray(cmyk, "CMYK").save(d / "jpeg-cmyk.jpg", quality=100)
    return Case(d / "jpeg-cmyk.jpg", want, False, "CMYK", tol=4)


def _quadrants(h: int, w: int) -> np.ndarray:
    """Red, green / blue, white quadrants: every rotation and flip looks different."""
    q = np.zeros((h, w, 3), np.uint8)
    q[: h // 2, : w // 2] = (255, 0, 0)
    q[: h // 2, w // 2 :] = (0, 255, 0)
    q[h // 2 :, : w // 2] = (0, 0, 255)
    q[h // 2 :, w // 2 :] = (255, 255, 255)
    return q


def _turned(path: Path, stored: np.ndarray, orientation: int) -> Path:
    """``stored`` written to ``path`` (its suffix names the format) with an orientation tag."""
    fmt = path.suffix.lstrip(".")
    if fmt == "tiff":  # TIFF's own tag; compressed (see the test below)
        Image.fromarray(stored).save(path, tiffinfo={0x0112: orientation}, compression="tiff_lzw")
        return path
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"jpg": {"quality": 100, "subsampling": 0}, "webp": {"lossless": True}}
    Image.fromarray(stored).save(path, exif=exif.tobytes(), **options.get(fmt, {}))
    return path


def _jpeg_rotated(d: Path, h: int, w: int, orientation: int) -> Case:
    stored = _quadrants(h, w)
    path = _turned(d / f"jpeg-exif-{orientation}.jpg", stored, orientation)
    # 6: shown turned a quarter clockwise (stored left column on top); 8: anticlockwise
    shown = np.rot90(stored, -1 if orientation == 6 else 1)
    return Case(path, shown / 255, False, "RGB", tol=4)


def jpeg_exif_6(d: Path, h: int, w: int) -> Case:
    return _jpeg_rotated(d, h, w, 6)


def jpeg_exif_8(d: Path, h: int, w: int) -> Case:
    return _jpeg_rotated(d, h, w, 8)


def tiff_8bit_rgb(d: Path, h: int, w: int) -> Case:
    rgb = _u8(_rng(8), h, w, 3)
    Image.fromarray(rgb, "RGB").save(d / "tiff-8bit-rgb.tif", compression="tiff_lzw")
    return Case(d / "tiff-8bit-rgb.tif", rgb / 255, False, "RGB")


def tiff_16bit_gray(d: Path, h: int, w: int) -> Case:
    v = _wide_gray(h, w)
    Image.fromarray(v).save(d / "tiff-16bit-gray.tiff")
    return Case(d / "tiff-16bit-gray.tiff", _gray(v, 65535), True, "I;16")


def webp_rgba(d: Path, h: int, w: int) -> Case:
    rng = _rng(9)
    rgb, a = _u8(rng, h, w, 3), _transparent_corner(_u8(rng, h, w))
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(
        d / "webp-rgba.webp", lossless=True, exact=True
    )
    return Case(d / "webp-rgba.webp", _over_white(rgb, a), False, "RGBA")


def bmp_rgb(d: Path, h: int, w: int) -> Case:
    rgb = _u8(_rng(10), h, w, 3)
    Image.fromarray(rgb, "RGB").save(d / "bmp-rgb.bmp")
    return Case(d / "bmp-rgb.bmp", rgb / 255, False, "RGB")


def gif_frames(d: Path, h: int, w: int) -> Case:
    """Three different frames; the first is the picture."""
    idx = _indices(_rng(11), h, w)
    frames = [_palette_image(idx), _palette_image(3 - idx), _palette_image(idx[::-1].copy())]
    frames[0].save(d / "gif-frames.gif", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(d / "gif-frames.gif") as im:
        assert im.n_frames == 3
    return Case(d / "gif-frames.gif", PALETTE[idx] / 255, False, "P")


CASES: dict[str, Callable[[Path, int, int], Case]] = {
    f.__name__.replace("_", "-"): f
    for f in (
        png_8bit_gray,
        png_16bit_gray,
        png_la,
        png_rgb,
        png_rgba,
        png_palette,
        png_palette_transparent,
        jpeg_cmyk,
        jpeg_exif_6,
        jpeg_exif_8,
        tiff_8bit_rgb,
        tiff_16bit_gray,
        webp_rgba,
        bmp_rgb,
        gif_frames,
    )
}


def expected(case: Case, channels: int) -> np.ndarray:
    """uint8 ``(h, w, channels)`` by the policy: gray as is, RGB to gray by luma."""
    if channels == 3:
        x = case.want
    elif case.gray:
        x = case.want[..., :1]
    else:
        x = (case.want @ LUMA)[..., None]
    return np.rint(x * 255).astype(int)


def hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy().astype(int)


# each kind of file, read into 1 and 3 channels ------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", list(CASES))
def test_image_bit_depth_and_modes_each_kind_reads_by_the_policy(tmp_path, kind, channels):
    case = CASES[kind](tmp_path, 16, 24)
    with Image.open(case.path) as im:
        assert im.mode == case.mode  # the file really is of that kind
    h, w = case.want.shape[:2]
    got = media.read_image(case.path, channels=channels)
    assert got.dtype == torch.uint8 and got.shape == (channels, h, w)
    want = expected(case, channels)
    # luma: Pillow's fixed-point rounding may differ by one step from the exact weights
    tol = case.tol + (1 if channels == 1 and not case.gray else 0)
    diff = np.abs(hwc(got) - want)
    assert diff.max() <= tol, f"{kind}: off by {diff.max()} at {np.argwhere(diff > tol)[:3]}"
    assert media.probe_image(case.path) == MediaInfo(height=h, width=w)


@pytest.mark.parametrize("kind", ["png-16bit-gray", "tiff-16bit-gray"])
def test_image_bit_depth_and_modes_16bit_mid_grey_is_half(tmp_path, kind):
    """The reported bug: 32768 divided by 255 (129.0). It is 32768/65535 → 128/255."""
    path = CASES[kind](tmp_path, 4, 6).path
    for channels in (1, 3):
        got = media.read_image(path, channels=channels)[:, 0]
        assert got[:, 0].tolist() == [128] * channels  # 32768
        assert got[:, 1].tolist() == [0] * channels and got[:, 2].tolist() == [255] * channels
        assert got[:, 3].tolist() == [100] * channels  # 25828 = 100.498 steps: rounded once
        assert abs(got[0, 0].item() / 255 - 32768 / 65535) <= 0.5 / 255


@pytest.mark.parametrize("kind", ["png-la", "png-rgba", "webp-rgba", "png-palette-transparent"])
def test_image_bit_depth_and_modes_transparency_is_white(tmp_path, kind):
    """Fully transparent pixels are white whatever colour they hold (dropping alpha, as
    ``convert("RGB")`` does, would show the black stored under them)."""
    path = CASES[kind](tmp_path, 4, 6).path
    for channels in (1, 3):
        assert media.read_image(path, channels=channels)[:, 0, 0].tolist() == [255] * channels
    with Image.open(path) as im:
        dropped = np.asarray(im.convert("RGB"))[0, 0]
    assert dropped.tolist() != [255, 255, 255]  # so this test tells the two apart


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_image_bit_depth_and_modes_exif_orientation_is_applied(tmp_path, fmt, orientation):
    """A 16x32 picture stored sideways is shown (and probed) 32x16, turned the way
    PIL.ImageOps.exif_transpose turns it, whichever format holds the tag."""
    stored = _quadrants(16, 32)
    path = _turned(tmp_path / f"turned.{fmt}", stored, orientation)
    assert media.probe_image(path) == MediaInfo(height=32, width=16)
    got = hwc(media.read_image(path, channels=3))
    tol = 4 if fmt == "jpg" else 0
    assert np.abs(got - np.rot90(stored, -1 if orientation == 6 else 1)).max() <= tol
    # the stored top-left quadrant (red) is shown top-right (6) or bottom-left (8)
    red_at = (4, 12) if orientation == 6 else (28, 4)
    assert np.abs(got[red_at] - [255, 0, 0]).max() <= tol
    if fmt != "tiff":  # (Pillow turns a TIFF itself when it decodes it)
        with Image.open(path) as im:
            upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
        assert np.array_equal(got, upright)


def test_image_bit_depth_and_modes_turned_uncompressed_tiff_is_right_or_refused(tmp_path):
    """Pillow 13 decodes an uncompressed TIFF whose tag turns it a quarter into scrambled
    pixels at the unturned size: such a file is refused, never tokenized wrong."""
    stored = _quadrants(16, 32)
    path = tmp_path / "turned.tiff"
    Image.fromarray(stored).save(path, tiffinfo={0x0112: 6})
    assert media.probe_image(path) == MediaInfo(height=32, width=16)
    try:
        got = media.read_image(path, channels=3)
    except MediaReadError as exc:
        assert exc.reason == "cannot decode: Pillow gave 16x32 pixels, its header 32x16"
    else:  # a Pillow that decodes it right
        assert np.array_equal(hwc(got), np.rot90(stored, -1))


# a folder of them all through the real CLI ----------------------------------------------------


def test_image_bit_depth_and_modes_one_folder_through_tok_encode(trained_run, tmp_path, capsys):
    """Every kind in one folder (the reported crash: 8- and 16-bit PNGs together) is encoded
    by ``tok encode`` — each file a row, tokens those of the pixels the policy gives."""
    src = tmp_path / "mixed"
    src.mkdir()
    files = sorted(make(src, 28, 28).path for make in CASES.values())
    out = tmp_path / "tokens"
    code, stdout, err = tok_cli(
        capsys, "encode", src, "--out", out, "--tokenizer", trained_run, "--no-progress"
    )
    assert code == 0, err
    assert err == ""  # nothing skipped
    assert f"wrote {len(CASES)} rows" in stdout
    tf = load_tokens(out)
    assert tf.keys == [p.stem for p in files] and len(files) == len(CASES)
    pixels = torch.stack([media.read_image(p, channels=1) for p in files])
    assert pixels[tf.keys.index("png-16bit-gray"), 0, 0, 0] == 128
    tokenizer = Tokenizer.load(trained_run)
    assert torch.equal(tf.tokens, tokenizer.encode(pixels.float() / 255))


# broken files: one line, never a crash -----------------------------------------------------------


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these chunks, each with a valid CRC."""
    body = b"".join(
        struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))
        for cid, data in chunks
    )
    return b"\x89PNG\r\n\x1a\n" + body


def broken_deflate_png(path: Path) -> Path:
    """A 28x28 PNG whose chunks and CRCs are valid but whose deflate data is garbage
    (torchvision's decode_image died on it with signal 11)."""
    good = path.with_name("source.png")
    Image.fromarray(_u8(_rng(12), 28, 28), "L").save(good)
    chunks = [
        (cid, data[:2] + b"\xff" * (len(data) - 2) if cid == b"IDAT" else data)
        for cid, data in _chunks(good.read_bytes())
    ]
    good.unlink()
    path.write_bytes(_png(chunks))
    return path


READ_ONE = """
import sys
from tok.media import MediaReadError, read_image
try:
    read_image(sys.argv[1], channels=3)
except MediaReadError as exc:
    print(exc)
"""


def read_in_subprocess(path: Path) -> str:
    """``read_image(path)``'s error line, read in a subprocess: a decoder that crashes (as
    torchvision's did on these files) must fail the test, not take pytest down with it."""
    proc = subprocess.run(
        [sys.executable, "-c", READ_ONE, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)  # not -11: a segfault
    return proc.stdout.strip()


def test_image_bit_depth_and_modes_broken_deflate_is_a_media_read_error(tmp_path):
    path = broken_deflate_png(tmp_path / "broken.png")
    with Image.open(path) as im:
        im.verify()  # every CRC is right: only decoding finds it
    assert media.probe_image(path) == MediaInfo(height=28, width=28)
    line = read_in_subprocess(path)
    assert line == f"{path}: cannot decode: broken data stream when reading image file"


def test_image_bit_depth_and_modes_broken_deflate_in_a_folder_is_skipped_by_tok_encode(
    trained_run, tmp_path
):
    src = tmp_path / "src"
    src.mkdir()
    png_8bit_gray(src, 28, 28)
    broken_deflate_png(src / "broken.png")
    out = tmp_path / "tokens"
    proc = tok_subprocess("encode", src, "--out", out, "--tokenizer", trained_run, "--no-progress")
    assert proc.returncode == 0, (proc.returncode, proc.stderr)  # was -11 (exit 139)
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("tok: warning: skipped 1 file(s)")
    assert "broken.png (cannot decode: broken data stream" in line
    assert "wrote 1 rows" in proc.stdout
    assert load_tokens(out).keys == ["png-8bit-gray"]


def _header_only_png(path: Path, width: int, height: int) -> Path:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    path.write_bytes(_png([(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")]))
    return path


def test_image_bit_depth_and_modes_decompression_bomb_is_refused(tmp_path):
    """Over PIL.Image.MAX_IMAGE_PIXELS (but under twice it, where Pillow only warns): refused
    from the header, by probe and read alike."""
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    path = _header_only_png(tmp_path / "bomb.png", side, side)
    with pytest.warns(Image.DecompressionBombWarning), Image.open(path):
        pass  # Pillow alone would go on and decode it
    line = f"{path}: refused: over {Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
    with pytest.raises(MediaReadError) as info:
        media.probe_image(path)
    assert str(info.value) == line
    assert read_in_subprocess(path) == line  # its pixel data is garbage too


def test_image_bit_depth_and_modes_only_six_formats_are_tried(tmp_path):
    """Another format is refused whatever its name; a known one is read whatever its name."""
    Image.new("RGB", (4, 4)).save(tmp_path / "pnm.png", format="PPM")
    Image.new("RGB", (4, 4)).save(tmp_path / "eps.png", format="EPS")
    for name in ("pnm.png", "eps.png"):
        with pytest.raises(MediaReadError, match="not a PNG, JPEG, BMP, GIF, TIFF or WebP image"):
            media.read_image(tmp_path / name, channels=3)
    Image.new("RGB", (4, 3), (10, 20, 30)).save(tmp_path / "bmp.png", format="BMP")
    assert media.read_image(tmp_path / "bmp.png", channels=3)[:, 0, 0].tolist() == [10, 20, 30]
    with pytest.raises(ValueError, match="channels"):
        media.read_image(tmp_path / "bmp.png", channels=4)
