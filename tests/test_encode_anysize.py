"""``tok encode --resize keep`` / ``tok decode`` at every item's own size: the full-size
real test photos (all different sizes) and the real video clips (different sizes, frame
rates and lengths; vtest.avi in windows), ragged token files (``tok.tokens/4``), tiles."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import one_error, photos_dir, tok_cli
from safetensors import safe_open
from torchvision.io import decode_image

from tok.anysize import decode_any, encode_any, grid_for
from tok.media import read_image, read_video, to_uint8
from tok.models import Tokenizer
from tok.tokens import RAGGED_FORMAT, RAGGED_MANIFEST_FORMAT, load_tokens

pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
VIDEOS = photos_dir().parent / "videos"
#: the four shorter clips (vtest.avi, 795 frames at 768x576, has its own windowed test)
CLIPS = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "tree.avi"]


def photo_keys() -> list[str]:
    return sorted(p.stem for p in (photos_dir() / "test").glob("*.jpg"))


def linked(folder: Path, files: list[Path]) -> Path:
    """A folder of symlinks to real files (the data is never copied)."""
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture(scope="module")
def photos_encoded(photo_run, tmp_path_factory):
    """``photos/test`` (11 photos, 11 sizes) encoded whole with ``--resize keep`` and
    decoded, by a tokenizer trained on 64x64 crops."""
    from tok import cli

    work = tmp_path_factory.mktemp("photos")
    tokens, decoded = work / "tokens", work / "decoded"
    src = photos_dir() / "test"
    args = ["--run", str(photo_run), "--no-progress"]
    assert cli.main(["encode", str(src), "--out", str(tokens), "--resize", "keep", *args]) == 0
    assert cli.main(["decode", str(tokens), "--out", str(decoded), "--no-progress"]) == 0
    return tokens, decoded


def test_full_size_photos_decode_at_their_own_sizes(photos_encoded, photo_run):
    tokens, decoded = photos_encoded
    model = Tokenizer.load(photo_run)
    tf = load_tokens(tokens)
    assert tf.keys == photo_keys() and tf.header.ragged
    sizes = set()
    for i, key in enumerate(tf.keys):
        image = read_image(photos_dir() / "test" / f"{key}.jpg", channels=3)
        png = decode_image(str(decoded / f"{key}.png"))
        assert png.shape == image.shape, key  # the original size, not the padded one
        assert tuple(tf.sizes[i].tolist()) == tuple(image.shape[1:])
        sizes.add(tuple(image.shape[1:]))
        # the tokens of a photo are those of encoding it alone …
        alone = encode_any(model, image[None].float().div(255))
        assert torch.equal(tf.row(i), alone[0]), key
        assert tuple(tf.grids[i].tolist()) == grid_for(model, tuple(image.shape[1:]))
        # … and decoding the file gives exactly what decoding them in memory gives
        assert torch.equal(png, to_uint8(decode_any(model, alone, size=image.shape[1:]))[0])
    assert len(sizes) == 8  # 11 photos: 512x819, 512x512 and 427x640 twice each


def test_ragged_token_files_and_manifest_are_versioned(photos_encoded):
    tokens, _ = photos_encoded
    manifest = json.loads((tokens / "manifest.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(manifest)
    assert manifest["format"] == RAGGED_MANIFEST_FORMAT == "tok.manifest/4"
    assert manifest["header"]["ragged"] is True
    assert manifest["header"]["source_options"] == {"resize": "keep", "fps": None}
    with safe_open(str(tokens / "00000.safetensors"), "pt") as f:
        assert f.metadata()["format"] == RAGGED_FORMAT == "tok.tokens/4"
        assert sorted(f.keys()) == ["grids", "sizes", "tokens"]
        assert f.get_tensor("tokens").shape == (int(f.get_tensor("grids").prod(1).sum()), 1)


def test_mixed_sizes_without_keep_is_one_error_naming_keep(photo_run, tmp_path, capsys):
    code, _, err = tok_cli(capsys, "encode", photos_dir() / "test", "--out", tmp_path / "t",
                           "--run", photo_run, "--no-progress")  # fmt: skip
    assert code != 0
    one_error(err, "mate_Garden.jpg is 512x819", "--resize keep")
    assert not (tmp_path / "t").exists()


def test_tiled_encode_is_recorded_and_decodes_with_tiles(photo_run, tmp_path, capsys):
    src = linked(tmp_path / "src", [photos_dir() / "test" / "ocv_baboon.jpg",
                                    photos_dir() / "test" / "ski_chelsea.jpg"])  # fmt: skip
    tokens, decoded = tmp_path / "tokens", tmp_path / "decoded"
    run = ["--run", photo_run, "--no-progress"]
    code, out, err = tok_cli(capsys, "encode", src, "--out", tokens, "--resize", "keep",
                             "--tile", 256, *run)  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"wrote 2 rows of tokens (each its own grid)x1 in 1 shard(s) to {tokens}"
    model = Tokenizer.load(photo_run)
    tf = load_tokens(tokens)
    assert tf.header.source_options == {"resize": "keep", "fps": None, "tile": 256}
    baboon = read_image(src / "ocv_baboon.jpg", channels=3)[None].float().div(255)
    assert torch.equal(tf.row(0), encode_any(model, baboon, tile=256)[0])
    assert not torch.equal(tf.row(0), encode_any(model, baboon)[0])  # 2x2 tiles differ a little
    # the same command again finds nothing to do; other options are refused, naming both
    assert tok_cli(capsys, "encode", src, "--out", tokens, "--resize", "keep", "--tile", 256,
                   *run)[0] == 0  # fmt: skip
    code, _, err = tok_cli(capsys, "encode", src, "--out", tokens, "--resize", "keep", *run)
    one_error(err, "--resize keep --tile 256, not --resize keep")
    code, _, err = tok_cli(capsys, "decode", tokens, "--out", decoded, "--tile", 128,
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    png = decode_image(str(decoded / "ocv_baboon.png"))
    want = decode_any(model, tf.row(0)[None], size=(512, 512), tile=128)
    assert torch.equal(png, to_uint8(want)[0])
    code, _, err = tok_cli(capsys, "decode", tokens, "--out", tmp_path / "d2", "--tile", 30)
    one_error(err, "--tile must be 0 (off) or a multiple of the stride 4, got 30")


# videos ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_run(tmp_path_factory) -> Path:
    """An untrained causal3d + FSQ tokenizer (time x4, space x16) for 17x64x64 clips: only
    sizes and exactness are checked with it."""
    torch.manual_seed(0)
    config = {"channels": [8, 16], "latent_dim": 4, "temporal_factor": 4, "time_patch": 2,
              "spatial_factor": 16, "patch_size": 8}  # fmt: skip
    tokenizer = Tokenizer.from_config(
        {
            "architecture": {"name": "causal3d", "config": config},
            "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
            "input_shape": [3, 17, 64, 64],
        }  # fmt: skip
    )
    return tokenizer.eval().save(tmp_path_factory.mktemp("video_run") / "run")


def round_trip_videos(capsys, video_run, src, work, *, fps, window) -> tuple[Path, Path]:
    tokens, decoded = work / "tokens", work / "decoded"
    code, _, err = tok_cli(capsys, "encode", src, "--out", tokens, "--run", video_run,
                           "--resize", "keep", "--fps", fps, "--window", window,
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    code, _, err = tok_cli(capsys, "decode", tokens, "--out", decoded, "--no-progress")
    assert code == 0, err
    return tokens, decoded


def check_clip(model, tf, i, src: Path, decoded: Path, *, fps, window) -> tuple[int, ...]:
    """Row ``i``: the tokens of the clip encoded alone (in windows), the file's tokens
    decoded exactly as those, and an mp4 of the clip's own frame count and size."""
    key = tf.keys[i]
    clip = read_video(next(src.glob(f"{key}.*")), fps=fps)  # (t, 3, h, w)
    x = clip.permute(1, 0, 2, 3)[None]
    alone = encode_any(model, x, window=window)
    assert torch.equal(tf.row(i), alone[0]), key
    assert tuple(tf.sizes[i].tolist()) == tuple(x.shape[2:])
    assert tuple(tf.grids[i].tolist()) == grid_for(model, tuple(x.shape[2:]), window=window)
    size = tuple(x.shape[2:])
    assert decode_any(model, tf.row(i)[None], size=size, window=window).shape == (1, 3, *size)
    written = read_video(decoded / f"{key}.mp4")  # H.264: lossy, so its size is checked
    assert written.shape == clip.shape, key
    return size


@pytest.mark.parametrize("name", CLIPS)
def test_real_clips_round_trip_at_their_own_size_rate_and_length(name, video_run, tmp_path,
                                                                   capsys):  # fmt: skip
    """Each clip differs in size (176x144 to 1280x720), frame rate (15 to 30 fps) and
    length; resampled to 1 fps, in windows of 9 frames."""
    src = linked(tmp_path / "clips", [VIDEOS / name])
    tokens, decoded = round_trip_videos(capsys, video_run, src, tmp_path, fps=1, window=9)
    model = Tokenizer.load(video_run)
    tf = load_tokens(tokens)
    assert tf.keys == [Path(name).stem]
    t, h, w = check_clip(model, tf, 0, src, decoded, fps=1, window=9)
    assert (h, w) == tuple(read_video(VIDEOS / name, frames=1).shape[2:])
    assert (decoded / "preview.gif").exists()


def test_vtest_is_encoded_and_decoded_in_windows(video_run, tmp_path, capsys):
    """vtest.avi: 795 frames of 768x576 at 10 fps; at 0.25 fps 19 frames, in windows of 9:
    9 + 9 + 1 frames, 3 + 3 + 1 latent frames."""
    src = linked(tmp_path / "clips", [VIDEOS / "vtest.avi"])
    tokens, decoded = round_trip_videos(capsys, video_run, src, tmp_path, fps=0.25, window=9)
    model = Tokenizer.load(video_run)
    tf = load_tokens(tokens)
    assert check_clip(model, tf, 0, src, decoded, fps=0.25, window=9) == (19, 576, 768)
    assert tuple(tf.grids[0].tolist()) == (3 + 3 + 1, 36, 48)
    assert tf.header.source_options == {"resize": "keep", "fps": 0.25, "window": 9}
    assert read_video(decoded / "preview.gif").shape[-1] == 256  # every 3rd pixel


def test_a_continuous_tokenizer_writes_ragged_latents(tmp_path, capsys):
    """A VAE (conv + gaussian, untrained) at every photo's own size: ragged latent files
    (``tok.tokens/4``, ``kind: "latents"``) of the latent means, in the asked dtype."""
    torch.manual_seed(0)
    arch = {"channels": [8, 16, 16], "blocks": [0, 1, 1], "latent_dim": 4}
    run = Tokenizer.from_config(
        {"architecture": {"name": "conv", "config": arch},
         "bottleneck": {"name": "gaussian", "config": {}}, "input_shape": [3, 64, 64]}
    ).eval().save(tmp_path / "vae")  # fmt: skip
    src = linked(tmp_path / "src", [photos_dir() / "test" / "ski_chelsea.jpg",
                                    photos_dir() / "test" / "ocv_messi.jpg"])  # fmt: skip
    tokens, decoded = tmp_path / "latents", tmp_path / "decoded"
    code, out, err = tok_cli(capsys, "encode", src, "--out", tokens, "--run", run, "--resize",
                             "keep", "--latent-dtype", "float16", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        f"wrote 2 rows of latents (each its own grid)x4 (float16) in 1 shard(s) to {tokens}"
    )
    assert tok_cli(capsys, "decode", tokens, "--out", decoded, "--no-progress")[0] == 0
    model = Tokenizer.load(run)
    tf = load_tokens(tokens)
    assert tf.kind == "latents" and tf.header.ragged and tf.header.dtype == "float16"
    for i, key in enumerate(tf.keys):
        image = read_image(src / f"{key}.jpg", channels=3)
        alone = encode_any(model, image[None].float().div(255))[0]
        assert torch.equal(tf.row(i), alone.half().float()), key
        png = decode_image(str(decoded / f"{key}.png"))
        want = decode_any(model, tf.row(i)[None], size=image.shape[1:])
        assert png.shape == image.shape and torch.equal(png, to_uint8(want)[0])
