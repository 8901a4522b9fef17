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
