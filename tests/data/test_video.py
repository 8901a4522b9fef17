"""tok.data.VideoFolder / VideoShards and write_video: real mp4 and GIF files written here.

Each frame of the "counter" videos has one grey level (``LEVEL * i`` for frame
``i``), so which source frame a resampled frame came from can be read off it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import moving_square

from tok.data import VideoFolder, VideoShards, VideoSkippedWarning
from tok.data.folder import ImageSkippedWarning
from tok.errors import DatasetError
from tok.media import read_video, write_video
from tok.registry import registry

LEVEL = 20  # grey step between consecutive frames of a counter video


def readable(ds, split: str = "test") -> list[str]:
    """The keys whose files decode (what ``tok encode`` ends up with): headers listed by
    ``keys``, files decoded by ``read``, what was skipped reported once."""
    keys = ds.read(split, ds.keys(split)).keys
    ds.report_skipped(split)
    return keys


def counter(t: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """uint8 ``(t, 1, h, w)``; frame ``i`` is uniformly ``LEVEL * i``."""
    return (torch.arange(t, dtype=torch.uint8) * LEVEL).view(t, 1, 1, 1).expand(t, 1, h, w).clone()


def frame_ids(video: torch.Tensor) -> list[int]:
    """Which counter frame each frame of ``video`` (``(t, c, h, w)``) is."""
    return [round(float(v) / LEVEL) for v in video.float().flatten(1).mean(1)]


def catch() -> warnings.catch_warnings:
    """Record every warning inside the ``with`` block."""
    return warnings.catch_warnings(record=True)


def skip_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, VideoSkippedWarning)]


# AVI files -----------------------------------------------------------------------


def write_avi(path: Path, video: torch.Tensor, fps: int) -> Path:
    """An AVI (MJPEG) file written with PyAV directly: tok writes only mp4 and gif."""
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = video.shape[-1], video.shape[-2], "yuvj444p"
        for frame in video.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_avi_files_are_read(tmp_path):
    video = moving_square(9, 32, 32)
    (tmp_path / "clips").mkdir()
    write_avi(tmp_path / "clips" / "a.avi", video, fps=9)
    back = read_video(tmp_path / "clips" / "a.avi")
    assert back.shape == (9, 3, 32, 32)
    assert (back[:, :1].int() - video.int()).abs().float().mean() < 4  # MJPEG is lossy
    ds = VideoFolder(path=str(tmp_path / "clips"), channels=1, frames=5)
    samples = ds.load("test")
    assert samples.keys == ["a"] and samples.images.shape == (1, 1, 5, 32, 32)


# the frame-rate and length policy -------------------------------------------------------


@pytest.fixture
def counter_gif(tmp_path) -> Path:
    """A 10-frame counter GIF at 10 fps (1 s)."""
    return write_video(tmp_path / "clips" / "count.gif", counter(10), fps=10)


def test_fps_resamples_by_nearest_timestamp(counter_gif):
    assert frame_ids(read_video(counter_gif)) == list(range(10))
    assert frame_ids(read_video(counter_gif, fps=5)) == [0, 2, 4, 6, 8]
    assert frame_ids(read_video(counter_gif, fps=20)) == [i // 2 for i in range(20)]
    # 0.25 s lies between frames 2 and 3 (0.2 s, 0.3 s): the earlier one wins the tie
    assert frame_ids(read_video(counter_gif, fps=4)) == [0, 2, 5, 7]
    assert frame_ids(read_video(counter_gif, fps=3)) == [0, 3, 7]
    # frames cuts the resampled clip
    assert frame_ids(read_video(counter_gif, fps=20, frames=5)) == [0, 0, 1, 1, 2]
    assert frame_ids(read_video(counter_gif, frames=4)) == [0, 1, 2, 3]


def test_mp4_timestamps_are_used_too(tmp_path):
    path = write_video(tmp_path / "c.mp4", counter(10, 16, 16), fps=10)
    assert frame_ids(read_video(path, fps=5)) == [0, 2, 4, 6, 8]


def test_frames_takes_the_first_frames_and_skips_short_videos(tmp_path):
    write_video(tmp_path / "long.gif", counter(10), fps=10)
    write_video(tmp_path / "short.gif", counter(4), fps=10)
    ds = VideoFolder(path=str(tmp_path), channels=1, frames=6)
    with catch() as record:
        warnings.simplefilter("always")
        samples = ds.load("test")
    assert samples.keys == ["long"]
    assert samples.images.shape == (1, 1, 6, 8, 8)
    assert frame_ids(samples.images[0].transpose(0, 1)) == [0, 1, 2, 3, 4, 5]
    [message] = skip_warnings(record)
    assert "short.gif (only 4 frames, need 6)" in message
    # with fps the count is of resampled frames: 4 frames at 10 fps are 8 at 20 fps
    with catch() as record:
        warnings.simplefilter("always")
        ds = VideoFolder(path=str(tmp_path), channels=1, frames=6, fps=20)
        assert readable(ds) == ["long", "short"]
    assert skip_warnings(record) == []
    with pytest.raises(DatasetError, match="short.gif"):
        readable(VideoFolder(path=str(tmp_path), channels=1, frames=6, strict=True))


def test_without_frames_every_video_must_have_one_length(tmp_path):
    write_video(tmp_path / "a.gif", counter(5), fps=10)
    write_video(tmp_path / "b.gif", counter(5), fps=10)
    ds = VideoFolder(path=str(tmp_path), channels=1)
    assert ds.load("test").images.shape == (2, 1, 5, 8, 8)
    assert ds.input_shape() == (1, 5, 8, 8)
    write_video(tmp_path / "c.gif", counter(7), fps=10)
    with pytest.raises(DatasetError) as info:
        VideoFolder(path=str(tmp_path), channels=1).load("test")
    assert "c.gif" in str(info.value) and "7 frames" in str(info.value)
    assert "a.gif has 5" in str(info.value) and "frames = N" in str(info.value)


# size and channels ----------------------------------------------------------------------


def test_size_policy(tmp_path):
    write_video(tmp_path / "a.gif", moving_square(4, 28, 28), fps=4)
    write_video(tmp_path / "wide.gif", moving_square(4, 28, 40), fps=4)
    with pytest.raises(DatasetError) as info:
        readable(VideoFolder(path=str(tmp_path), channels=1, frames=4))
    assert "wide.gif is 28x40" in str(info.value) and "--resize" in str(info.value)
    with pytest.raises(DatasetError, match=r"a.gif is 28x28 but size = \[16, 16\]"):
        readable(VideoFolder(path=str(tmp_path), channels=1, size=[16, 16]))
    for policy in ("resize", "center-crop"):
        ds = VideoFolder(path=str(tmp_path), channels=1, frames=3, size=[16, 20], resize=policy)
        samples = ds.load("test")
        assert samples.images.shape == (2, 1, 3, 16, 20), policy
        assert ds.input_shape() == (1, 3, 16, 20)


def test_channels_follow_the_image_folder_rules(tmp_path):
    rgb = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 200, 100, 30
    write_video(tmp_path / "rgb.gif", rgb, fps=3)
    gray = VideoFolder(path=str(tmp_path), channels=1).load("test").images
    assert gray.shape == (1, 1, 3, 8, 8)
    assert abs(int(gray[0, 0, 0, 0, 0]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 30)) <= 1
    color = VideoFolder(path=str(tmp_path), channels=3).load("test").images
    assert color[0, :, 0, 0, 0].tolist() == [200, 100, 30]


def test_bad_options():
    for kwargs, needle in [
        ({"channels": 2}, "channels"),
        ({"frames": 0}, "frames"),
        ({"fps": -1.0}, "fps"),
        ({"size": [8]}, "size"),
        ({"resize": "squash", "size": [8, 8]}, "squash"),
        ({"resize": "resize"}, "size"),
    ]:
        with pytest.raises(DatasetError, match=needle):
            VideoFolder(path=".", **kwargs)


# keys, splits, duplicates ---------------------------------------------------------------


def test_keys_splits_and_hidden_files(tmp_path):
    write_video(tmp_path / "train" / "b" / "x.y.gif", counter(2), fps=2)
    write_video(tmp_path / "train" / "a.mp4", counter(2, 16, 16), fps=2)
    write_video(tmp_path / "test" / "c.gif", counter(2), fps=2)
    write_video(tmp_path / "train" / ".hidden.gif", counter(2), fps=2)
    ds = VideoFolder(path=str(tmp_path), channels=1, frames=2, size=[8, 8], resize="resize")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoSkippedWarning)
        assert ds.keys("train") == ["a", "b/x.y"]
        assert ds.keys("test") == ["c"]
    with pytest.raises(DatasetError, match="no video with key 'zz'"):
        ds.read("test", ["zz"])
    only_train = tmp_path / "only"
    write_video(only_train / "train" / "a.gif", counter(2), fps=2)
    with pytest.raises(DatasetError, match="test/"):
        VideoFolder(path=str(only_train)).keys("test")


def test_two_files_with_one_key_are_an_error(tmp_path):
    write_video(tmp_path / "clip.gif", counter(2), fps=2)
    write_video(tmp_path / "clip.mp4", counter(2, 16, 16), fps=2)
    with pytest.raises(DatasetError) as info:
        VideoFolder(path=str(tmp_path)).keys("test")
    assert "clip.gif" in str(info.value) and "clip.mp4" in str(info.value)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        VideoFolder(path=str(tmp_path / "nope")).keys("test")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no video files"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        VideoFolder(path=str(tmp_path)).keys("test")


# unreadable files ---------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path) -> Path:
    """Three good videos (mp4 and gif), a truncated mp4, a text file named .mp4, a .txt."""
    folder = tmp_path / "videos"
    write_video(folder / "good" / "a.mp4", moving_square(8), fps=8)
    write_video(folder / "good" / "b.gif", moving_square(8), fps=8)
    write_video(folder / "good" / "c.mp4", moving_square(9), fps=8)
    data = (folder / "good" / "a.mp4").read_bytes()
    (folder / "bad").mkdir()
    (folder / "bad" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "bad" / "renamed.mp4").write_text("this is not a video\n")
    (folder / "notes.txt").write_text("hello\n")
    return folder


def test_unusable_files_are_skipped_with_one_warning(messy):
    def fresh() -> VideoFolder:  # a dataset reports what it skipped once
        return VideoFolder(path=str(messy), channels=1, frames=8)

    for method in (lambda: readable(fresh()), lambda: fresh().load("test").keys):
        with catch() as record:
            warnings.simplefilter("always")
            assert method() == ["good/a", "good/b", "good/c"]
        [message] = skip_warnings(record)
        assert "3 file(s)" in message
        assert "bad/truncated.mp4 (cannot decode" in message
        assert "bad/renamed.mp4 (cannot decode" in message
        assert "notes.txt (not a video file)" in message
        assert "\n" not in message
    # the warning is an ImageSkippedWarning too: one filter silences both kinds
    assert issubclass(VideoSkippedWarning, ImageSkippedWarning)


def test_strict_makes_unusable_files_an_error(messy):
    with pytest.raises(DatasetError) as info:
        readable(VideoFolder(path=str(messy), frames=8, strict=True))
    assert "bad/truncated.mp4" in str(info.value) and "bad/renamed.mp4" in str(info.value)


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    with catch(), pytest.raises(DatasetError, match="none of the 1 video files"):
        warnings.simplefilter("ignore")
        readable(VideoFolder(path=str(tmp_path)))


# webdataset shards --------------------------------------------------------------------


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(messy, tmp_path) -> Path:
    """Two webdataset shards: videos with .json/.cls companions, a broken video, a sample
    without a video."""
    good, bad = messy / "good", messy / "bad"
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "shard-000.tar", "w") as tar:
        add(tar, "clips/0001.mp4", (good / "a.mp4").read_bytes())
        add(tar, "clips/0001.json", b'{"caption": "a square"}')
        add(tar, "clips/0002.cls", b"3")
        add(tar, "clips/0002.gif", (good / "b.gif").read_bytes())
    with tarfile.open(folder / "shard-001.tar", "w") as tar:
        add(tar, "clips/0003.mp4", (bad / "truncated.mp4").read_bytes())
        add(tar, "clips/0004.mp4", (good / "c.mp4").read_bytes())
        add(tar, "clips/0005.json", b"{}")
    return folder


def test_shards_read_webdataset_samples(shards):
    ds = VideoShards(path=str(shards), channels=1, frames=8)
    with catch() as record:
        warnings.simplefilter("always")
        samples = ds.load("train")
    assert samples.keys == ["clips/0001", "clips/0002", "clips/0004"]
    assert samples.images.shape == (3, 1, 8, 28, 28)
    # the shard bytes are the files' bytes: same frames as reading the gif directly
    assert torch.equal(samples.images[1, 0], moving_square(8)[:, 0])
    [message] = skip_warnings(record)
    assert "shard-001.tar:clips/0003.mp4 (cannot decode" in message
    assert "shard-001.tar:clips/0005.json (a sample without a video)" in message
    assert ds.read("test", ["clips/0004"]).keys == ["clips/0004"]
    # one shard on its own
    one = VideoShards(path=str(shards / "shard-000.tar"), channels=1, frames=8)
    assert readable(one) == ["clips/0001", "clips/0002"]


def test_shards_the_webdataset_package_reads_give_the_same_keys(shards):
    wds = pytest.importorskip("webdataset")
    url = str(shards / "shard-000.tar")
    keys = [s["__key__"] for s in wds.WebDataset(url, shardshuffle=False)]
    assert keys == VideoShards(path=url).keys("test")


LONG = "a-clip-name-longer-than-the-100-bytes-a-plain-ustar-header-holds-" + "x" * 60


@pytest.fixture
def clips(messy, tmp_path) -> Path:
    """A folder as people tar it: videos at the top and in a subfolder, a long name, a
    .json companion, an AppleDouble ``._`` file."""
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    mp4 = (messy / "good" / "a.mp4").read_bytes()
    (folder / "000001.mp4").write_bytes(mp4)
    (folder / "000001.json").write_text("{}")
    (folder / "sub" / "000002.mp4").write_bytes((messy / "good" / "c.mp4").read_bytes())
    (folder / f"{LONG}.mp4").write_bytes(mp4)
    (folder / "._000001.mp4").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata, not a video
    return folder


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
@pytest.mark.parametrize(
    ("layout", "args"),
    [
        ("dot", ["-C", "{clips}", "."]),  # ./000001.mp4: what tar -C DIR . writes
        ("folder", ["-C", "{parent}", "clips"]),  # clips/000001.mp4
        ("names", ["-C", "{clips}", "000001.mp4", "000001.json", "sub", "{long}.mp4"]),
    ],
)
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_tar_layouts_keys_are_webdatasets_for_every_layout(clips, tmp_path, layout, args, fmt):
    wds = pytest.importorskip("webdataset")
    shard = tmp_path / "shards" / f"{layout}-{fmt}.tar"
    shard.parent.mkdir()
    filled = [a.format(clips=clips, parent=clips.parent, long=LONG) for a in args]
    made = subprocess.run(
        ["tar", f"--format={fmt}", "-cf", str(shard), *filled], capture_output=True, text=True
    )
    if fmt == "ustar" and made.returncode != 0:  # ustar cannot hold the long name: tar says so
        assert "name is too long" in made.stderr or "too long" in made.stderr
        return
    assert made.returncode == 0, made.stderr
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    # webdataset's samples that hold a video field; clips/._000001.mp4 is a sample "clips/"
    # with a field "_000001.mp4" to it, not a video
    theirs = [s["__key__"] for s in samples if {"mp4", "gif"} & set(s)]
    for source in (shard, shard.parent):  # one shard, and a folder of shards
        ours = VideoShards(path=str(source), channels=1, frames=8).keys("test")
        assert sorted(ours) == sorted(theirs), (layout, fmt)
    assert len(theirs) == 3  # the AppleDouble file is no video for either


def test_damaged_and_foreign_shards(shards):
    data = (shards / "shard-000.tar").read_bytes()
    (shards / "shard-002.tar").write_bytes(data[:700])  # cut inside the first member
    (shards / "zz.tar").write_text("not a tar file at all")
    ds = VideoShards(path=str(shards), channels=1, frames=8)
    with catch() as record:
        warnings.simplefilter("always")
        with pytest.raises(DatasetError, match="'clips/0001'"):  # 002 repeats 000's keys
            ds.keys("test")
    (shards / "shard-002.tar").unlink()
    with catch() as record:
        warnings.simplefilter("always")
        assert readable(ds) == ["clips/0001", "clips/0002", "clips/0004"]
    [message] = skip_warnings(record)
    assert "zz.tar (not a readable tar file" in message
    with pytest.raises(DatasetError, match="zz.tar"):
        readable(VideoShards(path=str(shards), frames=8, strict=True))


def test_registered_names():
    datasets = registry("datasets")
    assert datasets.get("videofolder") is VideoFolder and datasets.get("videos") is VideoFolder
    assert datasets.get("videoshards") is VideoShards
    assert datasets.get("webdataset") is VideoShards
