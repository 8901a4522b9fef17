"""Tests for tok.data.sources: what a source on the command line holds."""

from __future__ import annotations


def test_source_media_a_folder_of_gifs_is_video_and_a_mixed_one_image(tmp_path):
    """GIFs are read as images too (their first frame) since image decoding moved to
    Pillow; a folder that holds only GIFs still goes to a video run, as before."""
    from tok.data.sources import source_media

    gifs = tmp_path / "gifs"
    gifs.mkdir()
    for name in ("a.gif", "b.gif"):
        (gifs / name).write_bytes(b"GIF89a")
    assert source_media(str(gifs)) == "video"
    (gifs / "c.png").write_bytes(b"\x89PNG")
    assert source_media(str(gifs)) == "image"


def test_tar_shards_go_to_the_dataset_of_the_tokenizers_media(tmp_path):
    """``imageshards`` and ``videoshards`` both read ``.tar`` files: the tokenizer's input
    shape (images or videos) decides which one ``tok encode SHARDS`` opens, for a folder of
    shards and for one shard."""
    import tarfile

    from tok.data import ImageShards, VideoShards
    from tok.data.sources import open_source

    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar"):
        with tarfile.open(folder / name, "w"):
            pass
    for src in (folder, folder / "shard-000001.tar"):
        image, _ = open_source(str(src), input_shape=(1, 28, 28), split="test")
        video, _ = open_source(str(src), input_shape=(1, 5, 32, 32), split="test")
        assert type(image) is ImageShards and type(video) is VideoShards, src
        assert (image.channels, image.size) == (1, (28, 28))
        assert (video.frames, video.size) == (5, (32, 32))
    # beside images, the shards lose: the folder is an image folder
    (folder / "a.png").write_bytes(b"\x89PNG")
    (folder / "b.png").write_bytes(b"\x89PNG")
    (folder / "c.png").write_bytes(b"\x89PNG")
    image, _ = open_source(str(folder), input_shape=(1, 28, 28), split="test")
    assert type(image).__name__ == "ImageFolder"


def test_source_media_of_tar_shards_is_what_their_members_are(tmp_path):
    """Both shard datasets read ``.tar``, so a shard counts as what its members are (the
    first shard's first members, headers only): ``tok encode SHARDS`` without
    ``--tokenizer`` then picks an image run for image shards. A shard that cannot be read
    counts for both kinds, a tie that goes to video, as every shard did before."""
    import io
    import tarfile

    from tok.data.sources import source_media

    def shard(path, names):
        with tarfile.open(path, "w") as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))

    (tmp_path / "img").mkdir()
    shard(tmp_path / "img" / "shard-000000.tar", ["a.png", "a.cls", "a.json", "b.jpg"])
    shard(tmp_path / "img" / "shard-000001.tar", ["c.png"])
    (tmp_path / "vid").mkdir()
    shard(tmp_path / "vid" / "shard-000000.tar", ["a.mp4", "a.json"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.tar").write_bytes(b"not a tar file at all")
    assert source_media(str(tmp_path / "img")) == "image"
    assert source_media(str(tmp_path / "img" / "shard-000001.tar")) == "image"
    assert source_media(str(tmp_path / "vid")) == "video"
    assert source_media(str(tmp_path / "bad")) == "video"
