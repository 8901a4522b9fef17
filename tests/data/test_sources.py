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
