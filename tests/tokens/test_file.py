"""Token files (tok.tokens.file): header, dtype, write and read, format versions."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tok.errors import ConfigError, IndexRangeError, TokenFileError
from tok.tokens import (
    FORMAT,
    READ_FORMATS,
    TokenHeader,
    load_tokens,
    read_tokens,
    token_dtype,
    write_tokens,
)

from .helpers import OTHER_SHA, PLUGINS, SHA, make_header, random_tokens, write_v1_tokens


def stored_dtype(path) -> torch.dtype:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("tokens").dtype


def test_format_names():
    assert FORMAT == "tok.tokens/2"
    assert READ_FORMATS == ("tok.tokens/1", "tok.tokens/2")


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
        ((2**31,), torch.int32),
    ],
)
def test_token_dtype_boundaries(sizes, dtype):
    assert token_dtype(sizes) == dtype


def test_token_dtype_refuses_codebooks_over_2_pow_31():
    with pytest.raises(ConfigError, match=r"2\*\*31"):
        token_dtype((2**31 + 1,))
    with pytest.raises(ConfigError, match=r"2\*\*31"):
        token_dtype((16, 2**62))


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
    full = len(sizes) == 3
    header = make_header(
        codebook_sizes=sizes, grid=grid, full=full, plugins=PLUGINS if full else None
    )
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
    assert ("plugins" in meta) == full


def test_zero_row_file_round_trips(tmp_path):
    header = make_header(codebook_sizes=(8, 300), grid=(2, 3))
    path = write_tokens(
        tmp_path / "empty.safetensors",
        torch.zeros(0, 2, 3, 2, dtype=torch.long),
        keys=[],
        header=header,
    )
    tf = read_tokens(path)
    assert tf.tokens.shape == (0, 2, 3, 2) and tf.tokens.dtype == torch.int64
    assert tf.keys == [] and len(tf) == 0 and tf.header == header
    assert load_tokens(path).tokens.shape == (0, 2, 3, 2)


def test_header_metadata_round_trip_and_same_tokenizer():
    h = make_header(full=True)
    meta = h.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert TokenHeader.from_metadata(meta, path="x") == h
    assert TokenHeader.from_dict(h.to_dict(), path="x") == h
    assert h.same_tokenizer(make_header(grid=(3,)))
    assert not h.same_tokenizer(make_header(sha=OTHER_SHA))
    assert h.same_tokenizer(SHA)


@pytest.mark.parametrize(
    "plugins",
    [None, {}, PLUGINS, {"quantizer": {"plugin": "bsq", "distribution": None, "version": None}}],
)
@pytest.mark.parametrize("full", [False, True])
def test_header_with_and_without_plugins_round_trips(plugins, full):
    h = make_header(full=full, plugins=plugins)
    meta = h.to_metadata()
    assert meta["format"] == FORMAT
    if plugins is None:
        assert "plugins" not in meta and "plugins" not in h.to_dict()
    else:
        assert json.loads(meta["plugins"]) == plugins
        assert h.to_dict()["plugins"] == plugins
    back = TokenHeader.from_metadata(meta, path="x")
    assert back == h and back.plugins == plugins
    assert TokenHeader.from_dict(h.to_dict(), path="x") == h


@pytest.mark.parametrize(
    "bad", ['["conv"]', '{"architecture": "conv"}', '{"quantizer": {"plugin": 3}}']
)
def test_header_bad_plugins_field_is_named(bad):
    meta = make_header().to_metadata() | {"plugins": bad}
    with pytest.raises(TokenFileError, match=r"where\.safetensors.*'plugins'"):
        TokenHeader.from_metadata(meta, path="where.safetensors")
    with pytest.raises(ConfigError, match="plugins"):
        make_header(plugins=json.loads(bad))


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


# --------------------------------------------------------------------------- format versions


def test_v1_token_file_still_reads(tmp_path):
    header = make_header(codebook_sizes=(8, 1000), grid=(3, 2), full=True)
    tokens = random_tokens(4, header)
    keys = ["a", "b", "ключ", "d"]
    path = tmp_path / "old.safetensors"
    write_v1_tokens(path, tokens, keys=keys, header=header)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "tok.tokens/1"
    tf = read_tokens(path)
    assert tf.header == header and tf.header.plugins is None
    assert tf.keys == keys and torch.equal(tf.tokens, tokens)
    assert load_tokens(path).keys == keys


@pytest.mark.parametrize("fmt", ["tok.tokens/3", "tok.tokens/0"])
def test_unknown_token_file_format_is_one_clear_line(tmp_path, fmt):
    path = tmp_path / "00000.safetensors"
    meta = make_header().to_metadata() | {"format": fmt, "keys": '["a"]'}
    save_file({"tokens": torch.zeros(1, 7, 7, 1, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError) as info:
        read_tokens(path)
    assert str(info.value) == (
        f"{path} was written in format {fmt!r}, which this version of tok cannot read "
        "(it reads tok.tokens/1, tok.tokens/2); upgrade tok"
    )
    assert "\n" not in str(info.value)


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


def test_read_foreign_format_string_is_not_told_to_upgrade(tmp_path):
    path = tmp_path / "t.safetensors"
    meta = make_header().to_metadata() | {"format": "pt", "keys": '["a"]'}
    save_file({"tokens": torch.zeros(1, 7, 7, 1, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError, match="'pt'.*not written by tok") as info:
        read_tokens(path)
    assert "upgrade" not in str(info.value)


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


# --------------------------------------------------------------------------- for_tokenizer


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
    assert header.plugins == tokenizer.plugins()
    assert header.plugins["architecture"]["plugin"] == "conv"
    assert header.plugins["quantizer"]["plugin"] == "fsq"
    # the plugins survive a token file
    path = write_tokens(
        tmp_path / "t.safetensors",
        torch.zeros(1, 14, 14, 1, dtype=torch.long),
        keys=["a"],
        header=header,
    )
    assert read_tokens(path).header.plugins == tokenizer.plugins()


# header limits ----------------------------------------------------------------------------
# Every row key is in its token file's safetensors header, which holds at most 100 MB. Before,
# a shard of 420,000 long keys was encoded and then failed to write with a library traceback.

LONG_KEYS = [f"{i:06d}/" + "k" * 240 for i in range(420_000)]  # 247 characters each


def test_header_limits_a_plan_that_cannot_fit_is_refused_up_front_naming_what_fits():
    from tok.tokens import check_shard_headers
    from tok.tokens.file import MAX_HEADER_BYTES, header_bytes

    header = make_header(grid=(1,))
    with pytest.raises(
        ConfigError, match=r"--shard-size 420000 .* the largest shard size that fits is (\d+)"
    ) as info:
        check_shard_headers(header, LONG_KEYS, 420_000)
    fits = int(info.value.args[0].rsplit(" ", 1)[1])
    # the named size is the largest that fits: one more key does not
    assert header_bytes(header, LONG_KEYS[:fits]) <= MAX_HEADER_BYTES
    assert header_bytes(header, LONG_KEYS[: fits + 1]) > MAX_HEADER_BYTES
    check_shard_headers(header, LONG_KEYS, fits)  # and that plan is taken
    check_shard_headers(header, LONG_KEYS[:1000], 420_000)  # short lists never scan


def test_header_limits_write_tokens_refuses_in_one_line_and_writes_nothing(tmp_path):
    header = make_header(grid=(1,))
    tokens = torch.zeros(len(LONG_KEYS), 1, 1, dtype=torch.long)
    with pytest.raises(TokenFileError, match="need a .* MB header, over the 100 MB"):
        write_tokens(tmp_path / "big.safetensors", tokens, keys=LONG_KEYS, header=header)
    assert list(tmp_path.iterdir()) == []
