"""``tok encode`` / ``tok decode`` of real video files with the real ``causal3d`` architecture.

The videos are real MNIST test digits sliding across a 32x32 canvas, written
here as mp4 (H.264) and GIF files; the tokenizer is an untrained
``causal3d`` + ``fsq`` saved with ``Tokenizer.save`` (training is not what is
tested: the files, keys, grids and errors are).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import one_error, snapshot, tok_cli, tok_subprocess
from safetensors import safe_open

from tok import media
from tok.data import MNIST, VideoFolder
from tok.media import read_video, to_uint8, write_video
from tok.models import Tokenizer
from tok.tokens import load_tokens

T, SIZE = 5, 32  # the tokenizer's clip: 5 frames of 32x32 (grid 3x16x16)
SOURCE_FRAMES, SOURCE_FPS = 8, 10
MP4_KEYS = ["mp4/d0", "mp4/d1", "mp4/d2", "mp4/d3"]
GIF_KEYS = ["gif/d4", "gif/d5"]
KEYS = GIF_KEYS + MP4_KEYS  # sorted, as the folder lists them
ENCODE_SHARD = 4  # rows per token file in the main encode (shards of 4 and 2)


# helpers -----------------------------------------------------------------------


def sliding_digit(digit: torch.Tensor, frames: int = SOURCE_FRAMES) -> torch.Tensor:
    """uint8 ``(t, 1, 32, 32)``: a 28x28 digit moving one pixel right and down per frame."""
    video = torch.zeros(frames, 1, SIZE, SIZE, dtype=torch.uint8)
    for f in range(frames):
        x, y = f % 5, (2 * f) % 5
        video[f, 0, y : y + 28, x : x + 28] = digit
    return video


def main_encode(videos: Path, tokens: Path, video_run: Path) -> list[object]:
    """The command line of the module's main encode (``encoded``), also run again by a test."""
    return [
        "encode",
        videos,
        "--out",
        tokens,
        "--run",
        video_run,
        "--shard-size",
        ENCODE_SHARD,
        "--no-progress",
    ]


def clips(folder: Path, keys: list[str], **options) -> torch.Tensor:
    """The clips of ``keys`` as tok encode reads them, float ``(n, 1, T, 32, 32)``."""
    ds = VideoFolder(path=str(folder), channels=1, frames=T, size=[SIZE, SIZE], **options)
    samples = ds.read("test", keys)
    assert samples.keys == keys
    return samples.floats()


# fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained causal3d + fsq tokenizer for 1x5x32x32 clips, saved as a run folder."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_config(
        {
            "architecture": {
                "name": "causal3d",
                "config": {
                    "in_channels": 1,
                    "channels": [8, 16],
                    "temporal_factor": 2,
                    "spatial_factor": 2,
                    "latent_dim": 4,
                },
            },
            "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
            "input_shape": [1, T, SIZE, SIZE],
        }
    )
    assert tokenizer.grid == (3, 16, 16)
    return tokenizer.eval().save(tmp_path_factory.mktemp("video_run") / "run")


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real MNIST digits sliding, as 4 mp4 and 2 GIF files (8 frames at 10 fps)."""
    folder = tmp_path_factory.mktemp("videos") / "videos"
    digits = MNIST(download=False).read("test", [f"mnist/test/{i:05d}" for i in range(6)])
    for i, key in enumerate(sorted(MP4_KEYS + GIF_KEYS, key=lambda k: k[-1])):
        fmt = key.split("/")[0]
        write_video(folder / f"{key}.{fmt}", sliding_digit(digits.images[i, 0]), fps=SOURCE_FPS)
    return folder


@pytest.fixture(scope="module")
def encoded(video_run: Path, videos: Path, tmp_path_factory: pytest.TempPathFactory):
    """``python -m tok encode videos/`` then ``python -m tok decode tokens/``, real subprocesses."""
    work = tmp_path_factory.mktemp("encoded")
    tokens, decoded = work / "tokens", work / "decoded"
    proc = tok_subprocess(*main_encode(videos, tokens, video_run))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == f"wrote 6 rows of tokens 3x16x16x1 in 2 shard(s) to {tokens}"
    proc = tok_subprocess("decode", tokens, "--out", decoded, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == (
        f"wrote 6 mp4 videos to {decoded} and the preview {decoded / 'preview.gif'}"
    )
    return tokens, decoded


# the round trip ----------------------------------------------------------------


def test_token_files_hold_the_video_grid_and_the_tokenizers_tokens(encoded, video_run, videos):
    tokens, _ = encoded
    for i, rows in enumerate([KEYS[:ENCODE_SHARD], KEYS[ENCODE_SHARD:]]):
        with safe_open(str(tokens / f"{i:05d}.safetensors"), framework="pt") as f:
            meta = f.metadata()
            raw = f.get_tensor("tokens")
        assert json.loads(meta["grid"]) == [3, 16, 16]  # (T', H', W')
        assert json.loads(meta["keys"]) == rows
        assert json.loads(meta["tokenizer_config"])["input_shape"] == [1, T, SIZE, SIZE]
        assert meta["source"] == str(videos)
        assert raw.shape == (len(rows), 3, 16, 16, 1) and raw.dtype == torch.int16
    tf = load_tokens(tokens)
    assert tf.keys == KEYS
    tokenizer = Tokenizer.load(video_run)
    x = clips(videos, KEYS)
    assert x.shape == (6, 1, T, SIZE, SIZE)
    want = torch.cat([tokenizer.encode(x[:ENCODE_SHARD]), tokenizer.encode(x[ENCODE_SHARD:])])
    assert torch.equal(tf.tokens, want)
    # the first clip frames are the source's first frames (mp4 is lossy, GIF is not)
    digits = MNIST(download=False).read("test", ["mnist/test/00004"]).images
    assert torch.equal(to_uint8(x[0, 0]), sliding_digit(digits[0, 0])[:T, 0])


def test_decode_writes_an_mp4_per_row_and_a_preview(encoded, video_run):
    tokens, decoded = encoded
    files = sorted(p.relative_to(decoded).as_posix() for p in decoded.rglob("*") if p.is_file())
    assert files == sorted([f"{k}.mp4" for k in KEYS] + ["preview.gif"])
    tokenizer = Tokenizer.load(video_run)
    tf = load_tokens(tokens)
    want = to_uint8(tokenizer.decode(tf.tokens))  # (6, 1, T, 32, 32)
    for key, row in zip(KEYS, want, strict=True):
        path = decoded / f"{key}.mp4"
        assert path.read_bytes()[4:8] == b"ftyp"
        video = read_video(path)
        assert video.shape == (T, 3, SIZE, SIZE)
        diff = (video[:, :1].float() - row.transpose(0, 1).float()).abs()
        assert diff.mean() < 6, f"{key}: mp4 differs from the decoded frames by {diff.mean():.1f}"
    # preview.gif: the (at most 8) videos side by side in tok's one layout, animated,
    # lossless for gray
    preview = read_video(decoded / "preview.gif")
    assert preview.shape[0] == T
    for i in range(6):
        x, y = media.tile_origin(i, height=SIZE, width=SIZE, cols=6, rows=1, scale=1)
        tile = preview[:, :1, y : y + SIZE, x : x + SIZE]
        assert torch.equal(tile, want[i].transpose(0, 1)), KEYS[i]


def test_decode_as_gif_gives_the_decoded_frames_exactly(encoded, video_run, tmp_path, capsys):
    tokens, _ = encoded
    out = tmp_path / "gifs"
    code, stdout, err = tok_cli(
        capsys, "decode", tokens, "--out", out, "--video-format", "gif", "--fps", "5"
    )
    assert code == 0, err
    assert f"wrote 6 gif videos to {out}" in stdout
    want = to_uint8(Tokenizer.load(video_run).decode(load_tokens(tokens).tokens))
    for key, row in zip(KEYS, want, strict=True):
        assert torch.equal(read_video(out / f"{key}.gif")[:, :1], row.transpose(0, 1))
    assert read_video(out / "preview.gif", fps=5).shape[0] == T  # written at 5 fps


def test_encoding_again_redoes_nothing(encoded, video_run, videos, capsys):
    tokens, _ = encoded
    before = snapshot(tokens)
    code, stdout, err = tok_cli(capsys, *main_encode(videos, tokens, video_run))
    assert code == 0, err
    assert "(2 shard(s) were already done)" in stdout
    assert snapshot(tokens) == before


# unusable videos ---------------------------------------------------------------


def test_corrupt_videos_give_one_warning_line_and_lose_nothing(video_run, videos, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(videos, src)
    data = (src / "mp4" / "d0.mp4").read_bytes()
    (src / "bad").mkdir()
    (src / "bad" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (src / "bad" / "renamed.mp4").write_text("a text file, not a video\n")
    write_video(src / "bad" / "short.gif", torch.zeros(3, 1, SIZE, SIZE, dtype=torch.uint8))
    before = snapshot(src)
    out = tmp_path / "tokens"

    proc = tok_subprocess("encode", src, "--out", out, "--run", video_run, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tok: warning: skipped 3 file(s)")
    for needle in (
        "bad/truncated.mp4 (cannot decode",
        "bad/renamed.mp4 (cannot decode",
        f"bad/short.gif (only 3 frames, need {T})",
    ):
        assert needle in lines[0], lines[0]
    assert "wrote 6 rows" in proc.stdout
    assert load_tokens(out).keys == KEYS
    assert snapshot(src) == before  # the unusable files are still there, untouched


def test_a_folder_without_usable_videos_is_one_error(video_run, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom broken")
    (src / "b.png").write_bytes(b"not even a png")
    code, _, err = tok_cli(capsys, "encode", src, "--out", tmp_path / "out", "--run", video_run)
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("tok: error: ")]
    assert errors == [f"tok: error: none of the 1 video files in {src} is a usable video"]
    assert not (tmp_path / "out").exists()


def test_clips_too_short_after_resampling_are_skipped(video_run, videos, tmp_path, capsys):
    # 8 frames at 10 fps are 0.8 s: 4 frames at 5 fps, fewer than the tokenizer's 5
    code, _, err = tok_cli(
        capsys, "encode", videos, "--out", tmp_path / "out", "--run", video_run, "--fps", "5"
    )
    assert code != 0
    assert "only 4 frames at 5 fps, need 5" in err
    assert err.strip().splitlines()[-1].startswith("tok: error: none of the 6 video files")
    assert not (tmp_path / "out").exists()


def test_fps_resamples_before_encoding(video_run, videos, tmp_path, capsys):
    out = tmp_path / "tokens"
    code, _, err = tok_cli(
        capsys, "encode", videos, "--out", out, "--run", video_run, "--fps", "20", "--no-progress"
    )
    assert code == 0, err
    x = clips(videos, KEYS, fps=20)
    # at 20 fps every source frame appears twice: 0 0 1 1 2
    assert torch.equal(x[:, :, 1], x[:, :, 0]) and not torch.equal(x[:, :, 2], x[:, :, 0])
    assert torch.equal(load_tokens(out).tokens, Tokenizer.load(video_run).encode(x))


# shards, sources, refusals -----------------------------------------------------


def test_webdataset_shards_encode_like_the_folder(encoded, video_run, videos, tmp_path, capsys):
    tokens, _ = encoded
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, keys in enumerate([KEYS[:3], KEYS[3:]]):
        with tarfile.open(shards / f"part-{i:03d}.tar", "w") as tar:
            for key in keys:
                fmt = key.split("/")[0]
                tar.add(videos / f"{key}.{fmt}", arcname=f"{key}.{fmt}")
                info = tarfile.TarInfo(f"{key}.json")
                tar.addfile(info)  # an empty companion file, as webdataset samples have
    out = tmp_path / "from_shards"
    code, stdout, err = tok_cli(
        capsys, "encode", shards, "--out", out, "--run", video_run, "--no-progress"
    )
    assert code == 0, err
    assert err == "" and "wrote 6 rows" in stdout
    tf = load_tokens(out)
    assert tf.keys == KEYS  # webdataset's __key__
    # the same bytes, so the same clips and tokens as from the folder
    assert torch.equal(tf.tokens, load_tokens(tokens).tokens)
    # a single .tar works too
    code, stdout, err = tok_cli(
        capsys,
        "encode",
        shards / "part-001.tar",
        "--out",
        tmp_path / "one",
        "--run",
        video_run,
        "--no-progress",
    )
    assert code == 0, err
    assert load_tokens(tmp_path / "one").keys == KEYS[3:]


def test_existing_output_folders_are_never_overwritten(
    encoded, video_run, videos, tmp_path, capsys
):
    tokens, decoded = encoded
    before = snapshot(decoded)
    code, _, err = tok_cli(capsys, "decode", tokens, "--out", decoded, "--no-progress")
    assert code != 0
    one_error(err, str(decoded), "not empty")
    assert snapshot(decoded) == before

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.mp4").write_bytes(b"precious")
    before = snapshot(out)
    code, _, err = tok_cli(capsys, "encode", videos, "--out", out, "--run", video_run)
    assert code != 0
    one_error(err, str(out), "mine.mp4")
    assert snapshot(out) == before


def test_a_key_named_preview_keeps_its_own_file(video_run, videos, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(videos / "gif" / "d4.gif", src / "preview.gif")
    tokens, out = tmp_path / "tokens", tmp_path / "out"
    assert tok_cli(capsys, "encode", src, "--out", tokens, "--run", video_run)[0] == 0
    code, stdout, err = tok_cli(
        capsys, "decode", tokens, "--out", out, "--video-format", "gif", "--no-progress"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["_preview.gif", "preview.gif"]


def test_wrong_kind_of_source(video_run, tmp_path, capsys):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    (pngs / "a.png").write_bytes(b"\x89PNG")
    code, _, err = tok_cli(capsys, "encode", pngs, "--out", tmp_path / "o1", "--run", video_run)
    assert code != 0
    assert err.strip().splitlines()[-1].startswith("tok: error: no video files (.mp4")
    missing = tmp_path / "nothing"
    code, _, err = tok_cli(capsys, "encode", missing, "--out", tmp_path / "o2", "--run", video_run)
    assert code != 0
    one_error(err, str(missing), "videos", "movingmnist")
    # a dataset of images is not a source for a video tokenizer
    code, _, err = tok_cli(
        capsys,
        "encode",
        "mnist:test",
        "--out",
        tmp_path / "o3",
        "--run",
        video_run,
        "--no-progress",
    )
    assert code != 0
    one_error(err, "mnist:test", "(1, 28, 28)", "(1, 5, 32, 32)")
    # a video dataset gets the tokenizer's clip length; its 64x64 frames still do not fit
    code, _, err = tok_cli(
        capsys, "encode", "movingmnist:test", "--out", tmp_path / "o4", "--run", video_run
    )
    assert code != 0
    one_error(err, "movingmnist:test", "(1, 5, 64, 64)", "(1, 5, 32, 32)")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4"))


def test_image_tokenizers_refuse_fps(tmp_path, capsys):
    run = Tokenizer.from_config(
        {
            "architecture": {"name": "conv", "config": {"in_channels": 1, "channels": [8, 16]}},
            "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
            "input_shape": [1, 28, 28],
        }
    ).save(tmp_path / "run")
    code, _, err = tok_cli(
        capsys, "encode", tmp_path, "--out", tmp_path / "out", "--run", run, "--fps", "5"
    )
    assert code != 0
    one_error(err, "--fps", "video")
