"""Issue 11, kind 2: file names of every kind the file system allows encode and decode back
to the same names, and a temporary name never fails where its final name fits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import tok_subprocess

from tok._io import atomic_path, tmp_prefix, write_text
from tok.tokens import keys_sha256, read_tokens

NAME_MAX = 255  # bytes, on the file systems tests run on (ext4, tmpfs, overlayfs)

# as the file system stores them: bytes, not all of them UTF-8
NAMES = [
    b"with space.png",
    "ümlaut-数字.png".encode(),
    b"bad\xff\xfename.png",  # not UTF-8
    b"k" * 240 + b".png",  # a 240-character key
    "ü".encode() * 125 + b".png",  # 254 bytes, cut inside a character by a naive prefix
    b"sub dir \xe9/inner.png",  # a folder whose name is Latin-1, not UTF-8
]


def tree(root: Path) -> list[bytes]:
    """Every file under ``root`` as a relative path in bytes, sorted."""
    base = os.fsencode(root)
    return sorted(
        os.path.relpath(os.path.join(d, f), base) for d, _, files in os.walk(base) for f in files
    )


@pytest.fixture
def odd_names(mnist_pngs, tmp_path) -> Path:
    """Real MNIST PNGs copied under the names above."""
    digits = sorted(mnist_pngs.rglob("*.png"))
    root = tmp_path / "images"
    for name, digit in zip(NAMES, digits, strict=False):
        target = os.path.join(os.fsencode(root), name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(digit, target)
    return root


def test_file_names_of_every_kind_encode_and_decode_back_to_the_same_names(
    odd_names, trained_run, tmp_path
):
    enc = tok_subprocess("encode", odd_names, "--run", trained_run, "--out", tmp_path / "tokens")
    assert enc.returncode == 0, enc.stderr
    dec = tok_subprocess("decode", tmp_path / "tokens", "--out", tmp_path / "decoded")
    assert dec.returncode == 0, dec.stderr
    assert tree(tmp_path / "decoded") == tree(odd_names) == sorted(NAMES)
    # keys are the names as os.fsdecode reads them; os.fsencode gives the bytes back
    (shard,) = sorted((tmp_path / "tokens").glob("*.safetensors"))
    keys = read_tokens(shard).keys
    assert sorted(os.fsencode(k) + b".png" for k in keys) == sorted(NAMES)


def test_file_names_temporary_names_fit_wherever_the_final_name_fits(tmp_path):
    for length in (1, 200, 240, NAME_MAX):
        final = tmp_path / ("n" * length)
        assert len(os.fsencode(tmp_prefix(final))) + 8 <= NAME_MAX
        write_text(final, "x")  # before: "File name too long" from 241 bytes on
        assert final.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_file_names_a_failed_write_under_a_long_name_leaves_nothing(tmp_path):
    final = tmp_path / ("é" * 127)  # 254 bytes
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []


def test_file_names_keys_hash_as_before_for_utf8_names():
    # manifests written before undecodable names were supported keep their hashes
    import hashlib
    import json

    keys = ["7/00000", "ümlaut 数字", 'quote"d']
    before = hashlib.sha256(json.dumps(keys, ensure_ascii=False).encode("utf-8")).hexdigest()
    assert keys_sha256(keys) == before
    assert keys_sha256([os.fsdecode(b"bad\xff")]) != keys_sha256([os.fsdecode(b"bad\xfe")])
