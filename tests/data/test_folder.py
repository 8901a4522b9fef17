"""tok.data.ImageFolder: formats, channels, sizes, splits, keys, skipping unreadable files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, write_png

from tok.data import ImageFolder, ImageSkippedWarning
from tok.errors import DatasetError, ImageError
from tok.media import quiet_torchvision_io

# torchvision >= 0.29 warns on every image encode this test calls itself
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

LUMA = (0.299, 0.587, 0.114)


def readable(ds, split: str = "test") -> list[str]:
    """The keys whose files decode (what ``tok encode`` ends up with): headers listed by
    ``keys``, files decoded by ``read``, what was skipped reported once."""
    keys = ds.read(split, ds.keys(split)).keys
    ds.report_skipped(split)
    return keys


def solid(channels: int, value: tuple[int, ...], h: int = 8, w: int = 8) -> torch.Tensor:
    return (
        torch.tensor(value, dtype=torch.uint8)
        .view(channels, 1, 1)
        .expand(channels, h, w)
        .contiguous()
    )


def png(path: Path, image: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_torchvision_io():
        write_png(image, str(path))
    return path


def jpeg(path: Path, image: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_torchvision_io():
        path.write_bytes(encode_jpeg(image, quality=100).numpy().tobytes())
    return path


# formats and channels -------------------------------------------------------

R, G, B = 200, 100, 30
GRAY_OF_RGB = sum(c * w for c, w in zip((R, G, B), LUMA, strict=True))


@pytest.fixture
def formats(tmp_path) -> Path:
    png(tmp_path / "a_gray.png", solid(1, (90,)))
    png(tmp_path / "b_rgb.png", solid(3, (R, G, B)))
    # torchvision cannot write RGBA or palette PNGs; Pillow can
    Image.new("RGBA", (8, 8), (R, G, B, 255)).save(tmp_path / "c_rgba.png")
    jpeg(tmp_path / "d_gray.jpg", solid(1, (90,)))
    jpeg(tmp_path / "e_rgb.jpeg", solid(3, (R, G, B)))
    return tmp_path


def test_formats_to_three_channels(formats):
    samples = ImageFolder(path=str(formats), channels=3).load("test")
    assert samples.keys == ["a_gray", "b_rgb", "c_rgba", "d_gray", "e_rgb"]
    assert samples.images.shape == (5, 3, 8, 8) and samples.images.dtype == torch.uint8
    px = samples.images[:, :, 4, 4].int()
    assert px[0].tolist() == [90, 90, 90]  # gray PNG repeated
    assert px[1].tolist() == [R, G, B]  # RGB PNG kept
    assert px[2].tolist() == [R, G, B]  # RGBA PNG: alpha dropped
    assert (px[3] - 90).abs().max() <= 2  # JPEG is lossy
    assert (px[4] - torch.tensor([R, G, B])).abs().max() <= 4


def test_formats_to_one_channel(formats):
    samples = ImageFolder(path=str(formats), channels=1).load("train")
    assert samples.images.shape == (5, 1, 8, 8)
    px = samples.images[:, 0, 4, 4].int().tolist()
    assert px[0] == 90
    assert abs(px[1] - GRAY_OF_RGB) <= 2  # RGB -> luma
    assert abs(px[2] - GRAY_OF_RGB) <= 2
    assert abs(px[3] - 90) <= 2
    assert abs(px[4] - GRAY_OF_RGB) <= 4


def test_bad_options():
    with pytest.raises(DatasetError, match="channels"):
        ImageFolder(path=".", channels=4)
    with pytest.raises(DatasetError, match="squash"):
        ImageFolder(path=".", resize="squash", size=[8, 8])
    with pytest.raises(DatasetError, match="size"):
        ImageFolder(path=".", resize="resize")


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        ImageFolder(path=str(tmp_path / "nope")).keys("test")


# sizes ------------------------------------------------------------------------


def striped(h: int, w: int) -> torch.Tensor:
    """Black image whose central h x h square is white."""
    image = torch.zeros(1, h, w, dtype=torch.uint8)
    left = (w - h) // 2
    image[:, :, left : left + h] = 255
    return image


def test_resize_and_center_crop_give_the_requested_size(tmp_path):
    png(tmp_path / "wide.png", striped(28, 56))
    png(tmp_path / "tall.png", torch.full((1, 50, 20), 128, dtype=torch.uint8))
    for policy in ("resize", "center-crop"):
        samples = ImageFolder(path=str(tmp_path), channels=1, size=[28, 28], resize=policy).load(
            "test"
        )
        assert samples.images.shape == (2, 1, 28, 28), policy
        assert samples.keys == ["tall", "wide"]
    crop = ImageFolder(path=str(tmp_path), channels=1, size=[28, 28], resize="center-crop")
    squash = ImageFolder(path=str(tmp_path), channels=1, size=[28, 28], resize="resize")
    wide_crop = crop.read("test", ["wide"]).images[0, 0]
    wide_squash = squash.read("test", ["wide"]).images[0, 0]
    # center-crop keeps the white centre square only; resize squeezes in the black sides
    assert wide_crop.min() >= 250
    assert wide_squash[:, 0].max() <= 5 and wide_squash[:, 14].min() >= 250
    # a size that is not square
    samples = ImageFolder(path=str(tmp_path), channels=1, size=[10, 20], resize="center-crop").load(
        "test"
    )
    assert samples.images.shape == (2, 1, 10, 20)


def test_mixed_sizes_are_an_error_naming_the_file(tmp_path):
    png(tmp_path / "a.png", solid(1, (1,), 8, 8))
    png(tmp_path / "b.png", solid(1, (1,), 8, 8))
    png(tmp_path / "c.png", solid(1, (1,), 9, 12))
    with pytest.raises(ImageError) as info:
        ImageFolder(path=str(tmp_path), channels=1).load("test")
    assert "c.png" in str(info.value) and "9x12" in str(info.value) and "8x8" in str(info.value)
    with pytest.raises(ImageError, match="c.png"):
        readable(ImageFolder(path=str(tmp_path), channels=1))
    # a required size names it
    with pytest.raises(ImageError, match=r"\[28, 28\]"):
        readable(ImageFolder(path=str(tmp_path), channels=1, size=[28, 28]))


def test_keep_reads_each_image_at_its_own_size_one_size_at_a_time(tmp_path):
    png(tmp_path / "a.png", solid(1, (1,), 8, 8))
    png(tmp_path / "b.png", striped(9, 12))
    folder = ImageFolder(path=str(tmp_path), channels=1, resize="keep")
    assert folder.keys("test") == ["a", "b"]  # mixed sizes are no error
    assert folder.read("test", ["b"]).images.shape == (1, 1, 9, 12)
    assert torch.equal(folder.read("test", ["b"]).images[0], striped(9, 12))  # untouched
    assert folder.read("test", ["a"]).images.shape == (1, 1, 8, 8)
    with pytest.raises(DatasetError, match='2 sizes .* with resize = "keep" read them one key'):
        folder.read("test", ["a", "b"])
    with pytest.raises(DatasetError, match="'keep' keeps each item's own size, so it takes no"):
        ImageFolder(path=str(tmp_path), channels=1, size=[8, 8], resize="keep")


# splits, keys, hidden files ---------------------------------------------------


def test_train_and_test_subfolders_select_the_split(tmp_path):
    png(tmp_path / "train" / "a.png", solid(1, (10,)))
    png(tmp_path / "train" / "sub" / "b.png", solid(1, (20,)))
    png(tmp_path / "test" / "c.png", solid(1, (30,)))
    ds = ImageFolder(path=str(tmp_path), channels=1)
    assert ds.keys("train") == ["a", "sub/b"]
    assert ds.keys("test") == ["c"]
    assert ds.load("test").images[0, 0, 0, 0] == 30
    assert ds.load("train").images[:, 0, 0, 0].tolist() == [10, 20]


def test_a_folder_without_split_subfolders_serves_every_split(tmp_path):
    png(tmp_path / "x" / "a.png", solid(1, (10,)))
    ds = ImageFolder(path=str(tmp_path), channels=1)
    assert ds.keys("train") == ds.keys("test") == ["x/a"]


def test_a_missing_split_of_a_split_folder_is_an_error(tmp_path):
    # the whole folder would mix train images into the test split
    png(tmp_path / "train" / "a.png", solid(1, (10,)))
    ds = ImageFolder(path=str(tmp_path), channels=1)
    assert ds.keys("train") == ["a"]
    with pytest.raises(DatasetError, match="test"):
        ds.keys("test")


def test_keys_are_relative_paths_without_extension_sorted(tmp_path):
    png(tmp_path / "b" / "2.png", solid(1, (1,)))
    png(tmp_path / "b" / "10.PNG", solid(1, (1,)))
    png(tmp_path / "a" / "deep" / "x.y.png", solid(1, (1,)))
    jpeg(tmp_path / "c.JPG", solid(3, (1, 2, 3)))
    ds = ImageFolder(path=str(tmp_path), channels=1)
    assert ds.keys("test") == ["a/deep/x.y", "b/10", "b/2", "c"]
    assert ds.load("test").keys == ds.keys("test")
    assert ds.read("test", ["c", "b/2"]).keys == ["c", "b/2"]
    with pytest.raises(DatasetError, match="'b/3'"):
        ds.read("test", ["b/3"])


def test_two_files_with_one_key_are_an_error(tmp_path):
    png(tmp_path / "img.png", solid(1, (1,)))
    jpeg(tmp_path / "img.jpg", solid(1, (1,)))
    with pytest.raises(DatasetError) as info:
        ImageFolder(path=str(tmp_path), channels=1).keys("test")
    assert "img.png" in str(info.value) and "img.jpg" in str(info.value)


def test_hidden_files_are_ignored_silently(tmp_path):
    png(tmp_path / "a.png", solid(1, (1,)))
    png(tmp_path / ".hidden.png", solid(1, (2,)))
    png(tmp_path / ".cache" / "b.png", solid(1, (3,)))
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageSkippedWarning)
        ds = ImageFolder(path=str(tmp_path), channels=1)
        assert ds.keys("test") == ["a"]
        assert readable(ds) == ["a"]
        assert ds.load("test").keys == ["a"]


# unreadable files -------------------------------------------------------------


@pytest.fixture
def messy(tmp_path) -> Path:
    for i in range(3):
        png(tmp_path / "ok" / f"{i}.png", solid(1, (i,)))
    data = (tmp_path / "ok" / "0.png").read_bytes()
    (tmp_path / "ok" / "broken.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("hello\n")
    return tmp_path


def test_unreadable_files_are_skipped_with_one_warning(messy):
    def fresh() -> ImageFolder:  # a dataset reports what it skipped once
        return ImageFolder(path=str(messy), channels=1)

    for method in (lambda: readable(fresh()), lambda: fresh().load("test").keys):
        with pytest.warns(ImageSkippedWarning) as record:
            assert method() == ["ok/0", "ok/1", "ok/2"]
        skipped = [w for w in record if issubclass(w.category, ImageSkippedWarning)]
        assert len(skipped) == 1, [str(w.message) for w in skipped]
        message = str(skipped[0].message)
        assert "ok/broken.png" in message and "notes.txt" in message
        assert "2 file(s)" in message
        assert ".cpp" not in message  # torchvision's C++ source location is left out


def test_strict_makes_unreadable_files_an_error(messy):
    ds = ImageFolder(path=str(messy), channels=1, strict=True)
    with pytest.raises(ImageError) as info:
        readable(ds)
    assert "ok/broken.png" in str(info.value) and "notes.txt" in str(info.value)


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "b.txt").write_text("text")
    ds = ImageFolder(path=str(tmp_path), channels=1)
    with pytest.warns(ImageSkippedWarning), pytest.raises(DatasetError, match="none of the 1"):
        readable(ds)
    (tmp_path / "a.png").unlink()
    with (
        pytest.warns(ImageSkippedWarning, match="b.txt"),
        pytest.raises(DatasetError, match="no PNG/JPEG"),
    ):
        ds.keys("test")


# symlinks -------------------------------------------------------------------
# Before: Path.rglob does not enter symlinked folders, so their files were left out, exit 0,
# no word; a dangling link was dropped without a word too.


@pytest.fixture
def linked(tmp_path) -> Path:
    """``images/`` with its own digit, a symlinked folder of two more (kept elsewhere), a
    symlinked file, a link back up (a loop) and a link whose target is gone."""
    elsewhere = tmp_path / "elsewhere"
    png(elsewhere / "x.png", solid(1, (10,)))
    png(elsewhere / "y.png", solid(1, (20,)))
    root = tmp_path / "images"
    png(root / "own.png", solid(1, (30,)))
    (root / "more").symlink_to(elsewhere)
    (root / "alias.png").symlink_to(elsewhere / "x.png")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root)  # images/sub/up -> images: a loop
    (root / "gone.png").symlink_to(tmp_path / "deleted.png")
    return root


def test_symlinks_folders_and_files_behind_links_are_read_loops_and_dead_links_reported(linked):
    ds = ImageFolder(path=str(linked), channels=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        keys = readable(ds)
    assert keys == ["alias", "more/x", "more/y", "own"]
    [message] = [str(w.message) for w in record if w.category is ImageSkippedWarning]
    assert "gone.png (a broken symlink)" in message
    assert "sub/up (a symlink loop: not followed)" in message
    images = ds.read("test", keys).images
    assert images[:, 0, 0, 0].tolist() == [10, 10, 20, 30]  # the bytes behind each link


def test_symlinks_a_loop_through_two_links_ends(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    png(a / "1.png", solid(1, (1,)))
    png(b / "2.png", solid(1, (2,)))
    (a / "to_b").symlink_to(b)
    (b / "to_a").symlink_to(a)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert readable(ImageFolder(path=str(a), channels=1)) == ["1", "to_b/2"]
    [message] = [str(w.message) for w in record if w.category is ImageSkippedWarning]
    assert "to_b/to_a (a symlink loop: not followed)" in message
