"""tok.media: real PNG, mp4 and GIF files written and read back; the one layout, pixel-exact.

(Reading every bit depth and mode of image: tests/test_media_image_modes.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import moving_square
from PIL import Image

from tok import media
from tok._io import TMP_PREFIX
from tok.errors import DatasetError
from tok.media import MediaReadError, read_video, write_video

# torchvision >= 0.29 warns on every decode_image/encode_png this test calls itself
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _no_leftover_tmp(tmp_path):
    yield
    assert list(tmp_path.rglob(TMP_PREFIX + "*")) == []


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


def _gif_frames(path) -> list[torch.Tensor]:
    """Every frame of an animated GIF as RGB uint8 ``(h, w, 3)``, read with Pillow."""
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames > 1
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()))
    return frames


def _u8(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(c, h, w) float → (h·scale, w·scale, 3) uint8, as a tile is drawn."""
    up = x.expand(3, -1, -1).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return media.to_uint8(up).permute(1, 2, 0)


def _distinctive(*shape: int) -> torch.Tensor:
    """Floats that are exact multiples of 1/255 (they survive uint8 exactly)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, shape, generator=g).float() / 255


# images -------------------------------------------------------------------------------


def test_png_round_trip_and_header_probe(tmp_path):
    image = (_distinctive(3, 9, 14) * 255).to(torch.uint8)
    path = media.write_png(tmp_path / "a.png", image)
    assert media.probe_image(path) == media.MediaInfo(height=9, width=14)
    assert torch.equal(media.read_image(path, channels=3), image)
    assert media.read_image(path, channels=1).shape == (1, 9, 14)


def test_probe_finds_truncated_and_foreign_files_without_decoding(tmp_path):
    data = media.write_png(tmp_path / "a.png", torch.zeros(1, 30, 30, dtype=torch.uint8))
    (tmp_path / "half.png").write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png", format="PPM")  # a format tok does not read
    for name, needle in [
        ("half.png", "cannot decode"),
        ("text.png", "cannot decode: not a PNG, JPEG"),
        ("b.png", "cannot decode: not a PNG, JPEG, BMP, GIF, TIFF or WebP image"),
    ]:
        with pytest.raises(MediaReadError) as info:
            media.probe_image(tmp_path / name)
        assert needle in info.value.reason and name in str(info.value)


def test_images_are_read_from_their_bytes_as_from_their_file(tmp_path):
    """What image shards hand over: a file's bytes, named for messages."""
    image = (_distinctive(3, 9, 14) * 255).to(torch.uint8)
    data = media.write_png(tmp_path / "a.png", image).read_bytes()
    assert media.probe_image(data) == media.MediaInfo(height=9, width=14)
    assert torch.equal(media.read_image(data, channels=3), image)
    assert torch.equal(media.read_image(data, channels=1, name="s.tar:a.png"),
                       media.read_image(tmp_path / "a.png", channels=1))  # fmt: skip
    for call in (media.probe_image, lambda d, **k: media.read_image(d, channels=3, **k)):
        with pytest.raises(MediaReadError) as info:
            call(data[:40], name="s.tar:a.png")
        assert str(info.value).startswith("s.tar:a.png: cannot decode")
        with pytest.raises(MediaReadError) as info:
            call(b"not an image")
        assert (
            str(info.value)
            == "image data: cannot decode: not a PNG, JPEG, BMP, GIF, TIFF or WebP image"
        )


# videos -------------------------------------------------------------------------------


def test_gif_round_trip_is_exact_for_gray_and_few_colours(tmp_path):
    gray = moving_square(10)
    write_video(tmp_path / "g.gif", gray, fps=10)
    back = read_video(tmp_path / "g.gif")
    assert back.shape == (10, 3, 28, 28) and back.dtype == torch.uint8
    assert torch.equal(back, gray.expand(-1, 3, -1, -1))
    # gray pictures held as RGB are still written losslessly
    write_video(tmp_path / "g3.gif", gray.expand(-1, 3, -1, -1).contiguous(), fps=10)
    assert torch.equal(read_video(tmp_path / "g3.gif"), back)

    rgb = moving_square(7, 20, 30, c=3)
    rgb[:, 0] //= 2  # a few distinct colours
    write_video(tmp_path / "c.gif", rgb, fps=5)
    assert torch.equal(read_video(tmp_path / "c.gif"), rgb)


def test_mp4_round_trip_is_close_and_probe_reads_the_header(tmp_path):
    video = moving_square(12)
    path = write_video(tmp_path / "m.mp4", video, fps=12)
    assert path.read_bytes()[4:8] == b"ftyp"  # an ISO media file
    assert media.probe_video(path) == media.MediaInfo(height=28, width=28)
    assert media.probe_video(path.read_bytes()) == media.MediaInfo(height=28, width=28)
    back = read_video(path)
    assert back.shape == (12, 3, 28, 28)
    diff = (back[:, :1].int() - video.int()).abs().float()
    assert diff.mean() < 3 and (diff > 60).float().mean() < 0.01  # H.264 is lossy, not that lossy
    # odd sizes are fine too (4:4:4 instead of 4:2:0)
    odd = moving_square(3, 27, 31, c=3)
    assert read_video(write_video(tmp_path / "odd.mp4", odd, fps=3)).shape == (3, 3, 27, 31)


def test_write_video_is_atomic_and_checks_its_input(tmp_path):
    with pytest.raises(DatasetError, match="mp4 or gif"):
        write_video(tmp_path / "a.webm", moving_square(2))
    with pytest.raises(DatasetError, match="uint8"):
        write_video(tmp_path / "a.mp4", moving_square(2).float())
    with pytest.raises(DatasetError, match="fps"):
        write_video(tmp_path / "a.mp4", moving_square(2), fps=0)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    write_video(tmp_path / "a.gif", moving_square(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]


def test_read_and_probe_errors_name_the_file(tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    for read in (read_video, media.probe_video):
        with pytest.raises(MediaReadError) as info:
            read(tmp_path / "text.mp4")
        assert isinstance(info.value, DatasetError)  # a TokError: the CLI prints one line
        assert str(tmp_path / "text.mp4") in str(info.value)
        assert "cannot decode" in info.value.reason
    with pytest.raises(MediaReadError, match="video data: cannot decode"):
        read_video(b"\x00\x00\x00\x18ftypisom")


def test_write_item_chooses_the_file_kind_by_rank(tmp_path):
    image = (_distinctive(1, 6, 8) * 255).to(torch.uint8)
    video = moving_square(3, 8, 8).transpose(0, 1).contiguous()  # (c, t, h, w)
    assert media.write_item(tmp_path / "sub" / "img", image) == tmp_path / "sub" / "img.png"
    assert torch.equal(media.read_image(tmp_path / "sub" / "img.png", channels=1), image)
    gif = media.write_item(tmp_path / "vid", video, video_format="gif", fps=4)
    assert gif == tmp_path / "vid.gif"
    assert torch.equal(read_video(gif)[:, :1], video.transpose(0, 1))
    assert media.write_item(tmp_path / "vid", video).suffix == ".mp4"


# the one layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_image_comparison_tiles_hold_the_input_pixels(tmp_path, channels):
    n, h, w, cols, scale = 5, 10, 12, 3, 2
    orig = _distinctive(n, channels, h, w)
    rec = 1.0 - orig
    [path] = media.save_comparison(tmp_path, orig, rec, cols=cols, scale=scale)
    assert path == tmp_path / "recon.png"
    px = _pixels(path)
    p, lab, gap = media.PADDING, media.LABEL_HEIGHT, media.PAIR_GAP
    block_h = (2 * (h + p) + p) * scale
    assert px.shape[0] == lab + 2 * block_h + gap  # two blocks of (originals, reconstructions)

    def tile(x0: int, y0: int) -> torch.Tensor:
        return px[y0 : y0 + h * scale, x0 : x0 + w * scale]

    # the first original, located from the layout constants by hand, its reconstruction below
    assert torch.equal(tile(p * scale, lab + p * scale), _u8(orig[0], scale))
    assert torch.equal(tile(p * scale, lab + (2 * p + h) * scale), _u8(rec[0], scale))
    # tile_origin agrees, and finds the images of the second block
    assert media.tile_origin(0, height=h, width=w, cols=cols, scale=scale) == (
        p * scale,
        lab + p * scale,
    )
    for i in range(n):
        for row, want in ((0, orig[i]), (1, rec[i])):
            x, y = media.tile_origin(i, row=row, height=h, width=w, cols=cols, scale=scale)
            assert torch.equal(tile(x, y), _u8(want, scale)), (i, row)
    # the empty sixth slot is white, and the label strip has text
    x5, y5 = media.tile_origin(5, height=h, width=w, cols=cols, scale=scale)
    assert (tile(x5, y5) == 255).all()
    assert (px[:lab] < 200).any()


def test_video_comparison_is_an_animation_and_a_frame_strip(tmp_path):
    n, t, h, w, scale = 3, 5, 6, 7, 2
    orig, rec = _distinctive(n, 1, t, h, w), _distinctive(n, 1, t, h, w).flip(0)
    gif, strip = media.save_comparison(tmp_path, orig, rec, scale=scale)
    assert (gif.name, strip.name) == ("recon.gif", "recon_frames.png")
    frames = _gif_frames(gif)
    assert len(frames) == t
    for k in (0, t - 1):  # gray: the GIF is lossless
        for i in range(n):
            for row, video in ((0, orig), (1, rec)):
                x, y = media.tile_origin(i, row=row, height=h, width=w, cols=n, scale=scale)
                tile = frames[k][y : y + h * scale, x : x + w * scale]
                assert torch.equal(tile, _u8(video[i, :, k], scale)), (k, i, row)
    px = _pixels(strip)  # the first video's frames, original over reconstruction
    for k in range(t):
        for row, video in ((0, orig), (1, rec)):
            x, y = media.tile_origin(k, row=row, height=h, width=w, cols=t, scale=scale)
            assert torch.equal(px[y : y + h * scale, x : x + w * scale], _u8(video[0, :, k], scale))
    # colour videos are written too (a palette per frame)
    colour = media.save_comparison(
        tmp_path / "c", torch.rand(2, 3, 4, h, w), torch.rand(2, 3, 4, h, w), scale=1
    )
    assert len(_gif_frames(colour[0])) == 4


def test_preview_puts_videos_side_by_side_in_the_same_layout(tmp_path):
    videos = (_distinctive(3, 1, 4, 5, 6) * 255).to(torch.uint8)  # (n, c, t, h, w)
    path = media.save_preview(tmp_path / "preview.gif", videos, fps=5)
    frames = _gif_frames(path)
    assert len(frames) == 4
    for k in range(4):
        for i in range(3):
            x, y = media.tile_origin(i, height=5, width=6, cols=3, rows=1, scale=1)
            want = videos[i, :, k].expand(3, -1, -1).permute(1, 2, 0)
            assert torch.equal(frames[k][y : y + 5, x : x + 6], want), (k, i)


def test_comparisons_reject_bad_shapes(tmp_path):
    v = torch.rand(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="differ"):
        media.save_comparison(tmp_path, v, torch.rand(2, 1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        media.save_comparison(tmp_path, torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        media.save_comparison(tmp_path, v[:0, :, 0], v[:0, :, 0])
    assert list(tmp_path.iterdir()) == []


# video rotation metadata ----------------------------------------------------------------
# A phone stores a portrait clip landscape, with a display matrix that players apply. Before,
# tok read it landscape, and a recipe size matching what players show was refused.


def phone_clip(path, rotation: int, *, frames: int = 3):
    """A 16x32 (h x w) clip stored landscape, white 4x4 marker in the stored top-left corner
    and a grey one in the top-right, with a display matrix of ``rotation`` degrees."""
    import av

    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:4, :4] = 255
    stored[:4, -4:] = 128
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv444p"
        stream.options = {"qp": "0"}  # lossless: corners exact
        stream.set_display_rotation(rotation)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    ("rotation", "shape", "white_corner"),
    [
        (0, (16, 32), (0, 0)),
        (-90, (32, 16), (0, -1)),  # a portrait phone clip: turned clockwise, as players do
        (90, (32, 16), (-1, 0)),
        (180, (16, 32), (-1, -1)),
    ],
)
def test_video_rotation_is_applied_as_players_show_it(tmp_path, rotation, shape, white_corner):
    clip = phone_clip(tmp_path / "clip.mp4", rotation)
    info = media.probe_video(clip)
    assert (info.height, info.width) == shape
    video = read_video(clip)
    assert tuple(video.shape) == (3, 3, *shape)
    y, x = white_corner
    assert int(video[0, 0, y, x]) > 240  # the white marker where players show it


def test_video_rotation_a_recipe_size_of_the_shown_shape_is_taken(tmp_path):
    from tok.data import VideoFolder

    (tmp_path / "clips").mkdir()
    phone_clip(tmp_path / "clips" / "portrait.mp4", -90, frames=4)
    ds = VideoFolder(path=str(tmp_path / "clips"), size=[32, 16], frames=4)
    assert ds.load("test").images.shape == (1, 3, 4, 32, 16)


def test_read_video_short_side_scales_each_frame_by_area(tmp_path):
    # 4x4 blocks of one grey each: area scaling to a quarter gives each block's grey exactly
    blocks = torch.randint(0, 256, (3, 1, 6, 10), generator=torch.Generator().manual_seed(0))
    video = blocks.to(torch.uint8).repeat_interleave(4, -2).repeat_interleave(4, -1)  # 24x40
    path = write_video(tmp_path / "blocks.gif", video, fps=5)  # GIF: lossless for 256 greys
    small = read_video(path, short_side=6)
    assert small.shape == (3, 3, 6, 10)  # aspect kept: 24x40 -> 6x10
    assert (small[:, 0].int() - blocks[:, 0]).abs().max() <= 1
    assert read_video(path, short_side=12, fps=10).shape == (6, 3, 12, 20)  # with resampling
    tall = write_video(tmp_path / "tall.gif", video.transpose(-1, -2).contiguous(), fps=5)
    assert read_video(tall, short_side=6).shape == (3, 3, 10, 6)
