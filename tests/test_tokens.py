"""Token files and token folders (tok.tokens)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tok.errors import IndexRangeError, OutputDirError, TokenFileError, TokenizerMismatchError
from tok.tokens import (
    FORMAT,
    MANIFEST,
    TokenDir,
    TokenHeader,
    load_tokens,
    read_token_dir,
    read_tokens,
    token_dtype,
    write_tokens,
)

SHA = "a" * 64
OTHER_SHA = "b" * 64


def make_header(codebook_sizes=(16,), grid=(7, 7), sha=SHA, *, full: bool = False) -> TokenHeader:
    extra = {}
    if full:
        extra = {
            "tokenizer_config": {"arch": "conv", "dim": 4, "channels": [32, 64]},
            "tokenizer_path": "/runs/mnist/tokenizer.safetensors",
            "source": "mnist:test",
        }
    return TokenHeader(
        quantizer="fsq",
        quantizer_config={"levels": [8, 5, 5], "note": "ü"},
        codebook_sizes=tuple(codebook_sizes),
        grid=tuple(grid),
        tokenizer_sha256=sha,
        **extra,
    )


def random_tokens(n: int, header: TokenHeader, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    streams = [
        torch.randint(0, k, (n, *header.grid, 1), generator=g) for k in header.codebook_sizes
    ]
    return torch.cat(streams, dim=-1)


def stored_dtype(path) -> torch.dtype:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("tokens").dtype


# --------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    "sizes, dtype",
    [
        ((2,), torch.uint8),
        ((256,), torch.uint8),
        ((257,), torch.int16),
        ((32768,), torch.int16),
        ((32769,), torch.int32),
        ((8, 300, 4), torch.int16),
        ((2**20,), torch.int32),
    ],
)
def test_token_dtype_boundaries(sizes, dtype):
    assert token_dtype(sizes) == dtype


@pytest.mark.parametrize(
    "k, dtype", [(256, torch.uint8), (257, torch.int16), (32768, torch.int16), (32769, torch.int32)]
)
def test_stored_dtype_on_disk_and_extreme_values_survive(tmp_path, k, dtype):
    header = make_header(codebook_sizes=(k,), grid=(2,))
    tokens = torch.tensor([[[0], [k - 1]], [[k // 2], [k - 2]]])
    path = write_tokens(tmp_path / "t.safetensors", tokens, keys=["a", "b"], header=header)
    assert stored_dtype(path) == dtype
    tf = read_tokens(path)
    assert tf.tokens.dtype == torch.int64
    assert torch.equal(tf.tokens, tokens)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("grid", [(7, 7), (32,), (5, 8, 8)])
@pytest.mark.parametrize("sizes", [(256,), (8, 1000, 70000)])
def test_round_trip_exact(tmp_path, grid, sizes):
    header = make_header(codebook_sizes=sizes, grid=grid, full=len(sizes) == 3)
    tokens = random_tokens(5, header)
    keys = ["img/0.png", "img/1.png", "ключ", "a b", 'q"uote']
    path = tmp_path / "sub" / "tokens.safetensors"
    assert write_tokens(path, tokens, keys=keys, header=header) == path
    tf = read_tokens(path)
    assert tf.tokens.dtype == torch.int64
    assert tf.tokens.shape == (5, *grid, len(sizes))
    assert torch.equal(tf.tokens, tokens)
    assert tf.keys == keys
    assert tf.header == header
    assert tf.header.grid == grid and isinstance(tf.header.grid, tuple)
    assert tf.path == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    assert json.loads(meta["keys"]) == keys
    assert json.loads(meta["codebook_sizes"]) == list(sizes)


def test_header_metadata_round_trip_and_same_tokenizer():
    h = make_header(full=True)
    meta = h.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert TokenHeader.from_metadata(meta, path="x") == h
    assert TokenHeader.from_dict(h.to_dict(), path="x") == h
    assert h.same_tokenizer(make_header(grid=(3,)))
    assert not h.same_tokenizer(make_header(sha=OTHER_SHA))
    assert h.same_tokenizer(SHA)


def test_header_from_metadata_names_missing_and_bad_field():
    meta = make_header().to_metadata()
    del meta["tokenizer_sha256"]
    with pytest.raises(TokenFileError, match=r"where\.safetensors.*tokenizer_sha256"):
        TokenHeader.from_metadata(meta, path="where.safetensors")
    meta = make_header().to_metadata()
    meta["grid"] = "[7, -1]"
    with pytest.raises(TokenFileError, match=r"where\.safetensors.*'grid'"):
        TokenHeader.from_metadata(meta, path="where.safetensors")
    meta["grid"] = "not json"
    with pytest.raises(TokenFileError, match="'grid'.*JSON"):
        TokenHeader.from_metadata(meta, path="where.safetensors")


# --------------------------------------------------------------------------- write errors


@pytest.mark.parametrize("stream, value", [(1, 1000), (2, 70000), (0, -1)])
def test_out_of_range_index_raises_and_writes_nothing(tmp_path, stream, value):
    header = make_header(codebook_sizes=(8, 1000, 70000), grid=(3,))
    tokens = random_tokens(2, header)
    tokens[1, 2, stream] = value
    path = tmp_path / "t.safetensors"
    with pytest.raises(IndexRangeError) as info:
        write_tokens(path, tokens, keys=["a", "b"], header=header)
    msg = str(info.value)
    assert f"stream {stream}" in msg and str(value) in msg
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_shape_keys_and_dtype(tmp_path):
    header = make_header(codebook_sizes=(8, 8), grid=(4, 4))
    path = tmp_path / "t.safetensors"
    good = random_tokens(2, header)
    with pytest.raises(TokenFileError, match="shape"):
        write_tokens(path, good[..., :1], keys=["a", "b"], header=header)
    with pytest.raises(TokenFileError, match="shape"):
        write_tokens(path, good.reshape(2, 16, 2), keys=["a", "b"], header=header)
    with pytest.raises(TokenFileError, match="keys"):
        write_tokens(path, good, keys=["a"], header=header)
    with pytest.raises(TokenFileError, match="integer"):
        write_tokens(path, good.float(), keys=["a", "b"], header=header)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_atomically_and_keeps_old_file_on_error(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    path = tmp_path / "t.safetensors"
    first = random_tokens(3, header)
    write_tokens(path, first, keys=["a", "b", "c"], header=header)
    bad = first.clone()
    bad[0, 0, 0] = 8
    with pytest.raises(IndexRangeError):
        write_tokens(path, bad, keys=["a", "b", "c"], header=header)
    assert torch.equal(read_tokens(path).tokens, first)


# --------------------------------------------------------------------------- read errors


def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(TokenFileError) as info:
        read_tokens(path)
    assert str(path) in str(info.value)


def test_read_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00\x01 this is not a safetensors file at all" * 10)
    with pytest.raises(TokenFileError) as info:
        read_tokens(path)
    assert str(path) in str(info.value)
    assert "not a safetensors file" in str(info.value)


def test_read_safetensors_without_our_format(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"tokens": torch.zeros(2, 3, 1, dtype=torch.uint8)}, str(path))
    with pytest.raises(TokenFileError) as info:
        read_tokens(path)
    assert str(path) in str(info.value) and FORMAT in str(info.value)


def test_read_wrong_format_string(tmp_path):
    path = tmp_path / "t.safetensors"
    meta = make_header().to_metadata() | {"format": "tok.tokens/99", "keys": '["a"]'}
    save_file({"tokens": torch.zeros(1, 7, 7, 1, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError, match="tok.tokens/99") as info:
        read_tokens(path)
    assert str(path) in str(info.value)


def test_read_missing_tokens_tensor(tmp_path):
    path = tmp_path / "t.safetensors"
    meta = make_header().to_metadata() | {"keys": '["a"]'}
    save_file({"other": torch.zeros(1, 7, 7, 1, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError, match="'tokens'") as info:
        read_tokens(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "shape, keys, what",
    [((1, 7, 6, 1), ["a"], "shape"), ((1, 7, 7, 2), ["a"], "shape"), ((2, 7, 7, 1), ["a"], "keys")],
)
def test_read_shape_and_key_mismatch(tmp_path, shape, keys, what):
    path = tmp_path / "t.safetensors"
    meta = make_header().to_metadata() | {"keys": json.dumps(keys)}
    save_file({"tokens": torch.zeros(*shape, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError, match=what) as info:
        read_tokens(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- token folders

KEYS = [f"k{i:02d}" for i in range(10)]  # shard_size 3 -> shards of 3, 3, 3, 1


def all_tokens(header: TokenHeader) -> torch.Tensor:
    return random_tokens(len(KEYS), header, seed=1)


def write_some(td: TokenDir, tokens: torch.Tensor, indices) -> None:
    for i in indices:
        start = i * td.shard_size
        td.write_shard(i, tokens[start : start + td.shard_size])


def test_token_dir_write_all_and_load(tmp_path):
    header = make_header(codebook_sizes=(8, 300), grid=(2, 2))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td.pending()] == [0, 1, 2, 3]
    assert [k for _, ks in td.pending() for k in ks] == KEYS
    assert not td.complete
    # write out of order: the result is still in key order
    write_some(td, tokens, [3, 1, 0, 2])
    assert td.complete and td.pending() == []
    assert [p.name for p in td.shard_paths()] == [f"{i:05d}.safetensors" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST] + [p.name for p in td.shard_paths()]
    )
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["complete"] is True
    assert manifest["num_items"] == 10 and manifest["shard_size"] == 3
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 3, 1]
    assert all(s["done"] for s in manifest["shards"])
    assert TokenHeader.from_dict(manifest["header"]) == header

    tf = load_tokens(out)
    assert tf.keys == KEYS
    assert torch.equal(tf.tokens, tokens)
    assert tf.header == header and tf.path == out
    assert [len(p) for p in read_token_dir(out)] == [3, 3, 3, 1]
    # a single shard loads as a file too
    assert load_tokens(out / "00001.safetensors").keys == KEYS[3:6]


def test_token_dir_write_shard_rejects_wrong_row_count(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    td = TokenDir.open(tmp_path / "out", header=header, keys=KEYS, shard_size=3)
    with pytest.raises(TokenFileError, match="keys"):
        td.write_shard(0, all_tokens(header)[:2])
    assert [i for i, _ in td.pending()] == [0, 1, 2, 3]


def test_token_dir_resume_keeps_finished_shards(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1])
    first_two = td.shard_paths()[:2]
    old = 1_000_000_000  # set an old mtime so a rewrite would surely change it
    for p in first_two:
        os.utime(p, ns=(old, old))

    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert td2.pending() == [(2, KEYS[6:9]), (3, KEYS[9:])]
    assert not td2.complete
    write_some(td2, tokens, [i for i, _ in td2.pending()])
    assert td2.complete
    assert [p.stat().st_mtime_ns for p in first_two] == [old, old]
    tf = load_tokens(out)
    assert tf.keys == KEYS and torch.equal(tf.tokens, tokens)

    # reopening a finished folder has nothing to do
    assert TokenDir.open(out, header=header, keys=KEYS, shard_size=3).pending() == []


def test_token_dir_rewrites_shard_whose_file_is_gone_or_not_marked(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1])
    (out / "00000.safetensors").unlink()
    # a shard file renamed into place but not yet marked done (killed in between)
    write_tokens(out / "00002.safetensors", tokens[6:9], keys=KEYS[6:9], header=header)
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [0, 2, 3]


def test_token_dir_removes_stale_tmp_on_reopen(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0])
    stale = out / ".tmp-00001.safetensors.x1y2z3"
    stale.write_bytes(b"half a shard")
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert not stale.exists()
    assert stale in td2.removed_tmp
    assert [i for i, _ in td2.pending()] == [1, 2, 3]


def test_token_dir_refuses_folder_with_unrelated_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "holiday.jpg"
    precious.write_bytes(b"precious bytes")
    header = make_header(codebook_sizes=(8,), grid=(2,))
    with pytest.raises(OutputDirError) as info:
        TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert "holiday.jpg" in str(info.value) and "never overwrite" in str(info.value)
    assert precious.read_bytes() == b"precious bytes"
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_token_dir_names_at_most_three_foreign_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]:
        (out / name).write_text(name)
    with pytest.raises(OutputDirError) as info:
        TokenDir.open(out, header=make_header(), keys=KEYS, shard_size=3)
    msg = str(info.value)
    assert "a.txt" in msg and "c.txt" in msg and "d.txt" not in msg and "2 more" in msg


def test_token_dir_refuses_foreign_manifest_and_file_path(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"name": "someone else\'s"}')
    with pytest.raises(OutputDirError, match="never overwrites"):
        TokenDir.open(out, header=make_header(), keys=KEYS, shard_size=3)
    assert (out / MANIFEST).read_text() == '{"name": "someone else\'s"}'
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputDirError):
        TokenDir.open(afile, header=make_header(), keys=KEYS, shard_size=3)
    assert afile.read_text() == "x"


def test_token_dir_other_tokenizer_raises_mismatch(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0])
    before = (out / MANIFEST).read_text()
    other = make_header(codebook_sizes=(8,), grid=(2,), sha=OTHER_SHA)
    with pytest.raises(TokenizerMismatchError, match="--out"):
        TokenDir.open(out, header=other, keys=KEYS, shard_size=3)
    assert (out / MANIFEST).read_text() == before


@pytest.mark.parametrize(
    "keys, shard_size",
    [(KEYS[:-1], 3), (list(reversed(KEYS)), 3), (KEYS, 4)],
)
def test_token_dir_other_keys_or_shard_size_raise(tmp_path, keys, shard_size):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    with pytest.raises(OutputDirError, match="cannot resume"):
        TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)


def test_load_incomplete_dir_names_missing_shards(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0, 2])
    with pytest.raises(TokenFileError) as info:
        load_tokens(out)
    msg = str(info.value)
    assert str(out) in msg and "00001.safetensors" in msg and "00003.safetensors" in msg
    assert "00000.safetensors" not in msg


def test_load_dir_without_manifest(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(TokenFileError, match=MANIFEST):
        load_tokens(tmp_path / "d")


def test_load_dir_with_shards_from_different_tokenizers(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1, 2, 3])
    intruder = make_header(codebook_sizes=(8,), grid=(2,), sha=OTHER_SHA)
    write_tokens(out / "00002.safetensors", tokens[6:9], keys=KEYS[6:9], header=intruder)
    with pytest.raises(TokenizerMismatchError, match="00002.safetensors"):
        load_tokens(out)
    # on resume the intruding shard is not counted as finished
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [2]


def test_header_for_tokenizer_needs_saved_weights(tmp_path):
    from tok.errors import TokError
    from tok.models import Tokenizer

    tokenizer = Tokenizer.from_config(
        {
            "architecture": {"name": "conv", "config": {"in_channels": 1, "channels": [8, 16]}},
            "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
            "input_shape": [1, 28, 28],
        }
    )
    with pytest.raises(TokError, match=r"save\(\) or load\(\) it"):
        TokenHeader.for_tokenizer(tokenizer)
    tokenizer.save(tmp_path / "run")
    header = TokenHeader.for_tokenizer(tokenizer, path="runs/x", source="mnist:test")
    assert header.tokenizer_sha256 == tokenizer.weights_sha256
    assert (header.quantizer, header.grid, header.codebook_sizes) == ("fsq", (14, 14), (1000,))
    assert (header.tokenizer_path, header.source) == ("runs/x", "mnist:test")
    assert header.tokenizer_config == tokenizer.config()
