"""Token files (tok.tokens.file): header, dtype, write and read, format versions."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tok.errors import ConfigError, IndexRangeError, TokenFileError
from tok.tokens import (
    FORMAT,
    LATENT_FORMAT,
    RAGGED_FORMAT,
    READ_FORMATS,
    LatentHeader,
    TokenHeader,
    header_for_tokenizer,
    header_from_dict,
    header_from_metadata,
    load_tokens,
    read_tokens,
    token_dtype,
    write_tokens,
)

from .helpers import (
    OTHER_SHA,
    PLUGINS,
    SHA,
    make_header,
    make_latent_header,
    random_latents,
    random_tokens,
    write_v1_tokens,
)


def stored_dtype(path, tensor: str = "tokens") -> torch.dtype:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(tensor).dtype


def test_format_names():
    assert FORMAT == "tok.tokens/2"
    assert LATENT_FORMAT == "tok.tokens/3"
    assert READ_FORMATS == ("tok.tokens/1", "tok.tokens/2", "tok.tokens/3", "tok.tokens/4")


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
    assert "kind" not in meta  # token files are tok.tokens/2 as before latent files existed


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


@pytest.mark.parametrize("fmt", ["tok.tokens/5", "tok.tokens/0"])
def test_unknown_token_file_format_is_one_clear_line(tmp_path, fmt):
    path = tmp_path / "00000.safetensors"
    meta = make_header().to_metadata() | {"format": fmt, "keys": '["a"]'}
    save_file({"tokens": torch.zeros(1, 7, 7, 1, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError) as info:
        read_tokens(path)
    assert str(info.value) == (
        f"{path} was written in format {fmt!r}, which this version of tok cannot read "
        "(it reads tok.tokens/1, tok.tokens/2, tok.tokens/3, tok.tokens/4); upgrade tok"
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


# latent files ------------------------------------------------------------------------------
# A continuous tokenizer (a VAE) stores float latent means: the same file layout and
# provenance, kind "latents", format tok.tokens/3, tensor "latents", in the dtype the header
# names.


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("grid", [(1,), (4, 4)])
def test_latent_file_round_trip_stores_the_named_dtype(tmp_path, dtype, grid):
    header = make_latent_header(latent_dim=6, grid=grid, dtype=dtype, full=True)
    latents = random_latents(5, header)
    keys = ["a", "ключ", "c/d", "e f", "g"]
    path = write_tokens(tmp_path / "l.safetensors", latents, keys=keys, header=header)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["latents"]
        raw = f.get_tensor("latents")
    assert raw.dtype == getattr(torch, dtype) and raw.shape == (5, *grid, 6)
    assert torch.equal(raw, latents.to(raw.dtype))
    assert meta["format"] == LATENT_FORMAT == "tok.tokens/3"
    assert meta["kind"] == "latents" and meta["dtype"] == dtype
    assert json.loads(meta["latent_dim"]) == 6 and json.loads(meta["grid"]) == list(grid)
    assert meta["bottleneck"] == "gaussian"
    assert json.loads(meta["bottleneck_config"])["latent_dim"] == 6
    assert meta["tokenizer_sha256"] == SHA and json.loads(meta["keys"]) == keys
    assert json.loads(meta["plugins"])["bottleneck"]["plugin"] == "gaussian"
    assert "quantizer" not in meta and "codebook_sizes" not in meta
    tf = read_tokens(path)
    assert tf.kind == "latents" and tf.header == header and tf.keys == keys
    # read back as float32, exactly the stored values (float32: exactly what was written)
    assert tf.tokens.dtype == torch.float32
    assert torch.equal(tf.tokens, raw.float())
    if dtype == "float32":
        assert torch.equal(tf.tokens, latents)
    # the bytes are a function of the contents
    again = write_tokens(tmp_path / "again.safetensors", latents, keys=keys, header=header)
    assert again.read_bytes() == path.read_bytes()


def test_latent_file_reads_with_plain_safetensors_as_documented(tmp_path):
    header = make_latent_header(latent_dim=4)
    latents = random_latents(3, header)
    path = write_tokens(
        tmp_path / "00000.safetensors", latents, keys=["a", "b", "c"], header=header
    )
    # docs/token-format.md, "Latent files"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        means = f.get_tensor("latents").float()
    keys = json.loads(meta["keys"])
    assert meta["kind"] == "latents" and means.shape == (3, 1, 4) and keys == ["a", "b", "c"]
    assert torch.equal(means, latents)


def test_zero_row_latent_file_round_trips(tmp_path):
    header = make_latent_header(latent_dim=3, grid=(2, 2))
    path = write_tokens(tmp_path / "e.safetensors", header.empty(), keys=[], header=header)
    tf = read_tokens(path)
    assert tf.tokens.shape == (0, 2, 2, 3) and tf.tokens.dtype == torch.float32
    assert load_tokens(path).header == header


def test_latent_header_round_trips_and_is_told_from_a_token_header():
    lh = make_latent_header(full=True, dtype="bfloat16")
    d = lh.to_dict()
    assert list(d)[:7] == [
        "kind", "bottleneck", "bottleneck_config", "latent_dim", "dtype", "grid", "tokenizer_sha256"
    ]  # fmt: skip
    assert d["kind"] == "latents" and d["grid"] == [1]
    assert header_from_dict(d, path="x") == lh == LatentHeader.from_dict(d, path="x")
    assert header_from_metadata(lh.to_metadata(), path="x") == lh
    assert LatentHeader.from_metadata(lh.to_metadata(), path="x") == lh
    th = make_header(full=True)
    assert header_from_dict(th.to_dict(), path="x") == th
    assert "kind" not in th.to_dict()
    assert (lh.kind, th.kind) == ("latents", "tokens")
    assert lh.same_tokenizer(th) and not lh.same_layout(th)
    assert not lh.same_layout(make_latent_header(full=True, dtype="float32"))
    assert lh.describe() == "latents 1x20 bfloat16"
    assert th.describe() == "tokens 7x7x1 (codebook sizes 16)"
    # asking one kind for the other's header names both
    with pytest.raises(TokenFileError, match=r"^where: the header is of latents, not tokens"):
        TokenHeader.from_dict(d, path="where")
    with pytest.raises(TokenFileError, match="of tokens, not latents"):
        LatentHeader.from_metadata(th.to_metadata(), path="where")


@pytest.mark.parametrize(
    "field, value, want",
    [
        ("kind", "pixels", "'kind' must be one of tokens, latents"),
        ("dtype", "float64", "'dtype' must be one of float32, float16, bfloat16"),
        ("latent_dim", 0, "'latent_dim' must be a positive int"),
        ("bottleneck", "", "'bottleneck' must be a non-empty string"),
        ("bottleneck_config", [1], "'bottleneck_config' must be a JSON object"),
    ],
)
def test_latent_header_bad_field_is_named(field, value, want):
    d = make_latent_header().to_dict() | {field: value}
    with pytest.raises(TokenFileError, match=r"^where\.json: token header field " + want):
        header_from_dict(d, path="where.json")
    d = make_latent_header().to_dict()
    del d["dtype"]
    with pytest.raises(TokenFileError, match="lacks field.*dtype"):
        header_from_dict(d, path="where.json")
    with pytest.raises(ConfigError, match="float64"):
        make_latent_header(dtype="float64")


@pytest.mark.parametrize(
    "value, dtype, want",
    [
        (
            float("nan"),
            "float32",
            r"1 latent value\(s\) are not finite \(1 NaN, 0 ±inf\) in float32",
        ),
        (float("inf"), "float32", r"\(0 NaN, 1 ±inf\) in float32, the first in row 'b';"),
        (
            1e5,
            "float16",
            r"in float16, the first in row 'b': beyond float16's range \(±6\.55e\+04\)",
        ),
    ],
)
def test_non_finite_latents_are_refused_in_one_line_and_nothing_is_written(
    tmp_path, value, dtype, want
):
    header = make_latent_header(latent_dim=4, dtype=dtype)
    latents = random_latents(3, header)
    latents[1, 0, 2] = value
    path = tmp_path / "l.safetensors"
    with pytest.raises(TokenFileError, match=want) as info:
        write_tokens(path, latents, keys=["a", "b", "c"], header=header)
    assert str(info.value).startswith(f"cannot write {path}: ")
    assert "never stores non-finite latents" in str(info.value)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_write_latents_rejects_integers_bad_shape_and_keys(tmp_path):
    header = make_latent_header(latent_dim=4)
    good = random_latents(2, header)
    path = tmp_path / "l.safetensors"
    with pytest.raises(TokenFileError, match="latents must be a float tensor, got torch.int64"):
        write_tokens(path, good.long(), keys=["a", "b"], header=header)
    with pytest.raises(TokenFileError, match=r"shape \(2, 1, 3\).*4 latent dimension"):
        write_tokens(path, good[..., :3], keys=["a", "b"], header=header)
    with pytest.raises(TokenFileError, match="2 rows of latents but 1 keys"):
        write_tokens(path, good, keys=["a"], header=header)
    # and a token header refuses float rows
    with pytest.raises(TokenFileError, match="tokens must be an integer tensor"):
        write_tokens(path, good, keys=["a", "b"], header=make_header(grid=(1,)))
    assert list(tmp_path.iterdir()) == []


def _craft(path, tensors: dict, meta: dict) -> None:
    """A file tok would not write (bypassing write_tokens' checks)."""
    save_file(tensors, str(path), metadata=meta)


def test_read_latent_files_that_disagree_with_their_header(tmp_path):
    header = make_latent_header(latent_dim=4)
    meta = header.to_metadata() | {"keys": '["a"]'}
    path = tmp_path / "l.safetensors"
    _craft(path, {"latents": torch.zeros(1, 1, 4, dtype=torch.float16)}, meta)
    with pytest.raises(TokenFileError, match="dtype torch.float16, but the header says float32"):
        read_tokens(path)
    _craft(path, {"latents": torch.full((1, 1, 4), float("nan"))}, meta)
    with pytest.raises(TokenFileError, match=r"^" + str(path) + ": 4 latent value"):
        read_tokens(path)
    _craft(path, {"tokens": torch.zeros(1, 1, 4)}, meta)
    with pytest.raises(TokenFileError, match="has no 'latents' tensor"):
        read_tokens(path)
    _craft(path, {"latents": torch.zeros(1, 1, 4)}, meta | {"format": "tok.tokens/2"})
    with pytest.raises(TokenFileError, match="kind 'latents' is of format 'tok.tokens/3'"):
        read_tokens(path)


def test_header_for_tokenizer_of_a_continuous_tokenizer(tmp_path):
    from tok.errors import TokError
    from tok.models import Tokenizer

    vae = Tokenizer.from_config(
        {
            "architecture": {"name": "mlp", "config": {"in_channels": 1, "hidden": [16]}},
            "bottleneck": {"name": "gaussian", "config": {"latent_dim": 5}},
            "input_shape": [1, 28, 28],
        }
    )
    with pytest.raises(TokError, match=r"save\(\) or load\(\) it"):
        header_for_tokenizer(vae)
    vae.save(tmp_path / "run")
    header = header_for_tokenizer(vae, dtype="float16", path="runs/v", source="mnist:test")
    assert isinstance(header, LatentHeader)
    assert (header.bottleneck, header.latent_dim, header.grid, header.dtype) == (
        "gaussian", 5, (1,), "float16"
    )  # fmt: skip
    assert header.bottleneck_config == vae.bottleneck.config()
    assert header.tokenizer_sha256 == vae.weights_sha256
    assert header.tokenizer_config == vae.config() and header.plugins == vae.plugins()
    assert header.plugins["bottleneck"]["plugin"] == "gaussian"
    assert (header.tokenizer_path, header.source) == ("runs/v", "mnist:test")
    assert header_for_tokenizer(vae).dtype == "float32"
    with pytest.raises(TokError, match="continuous .*'gaussian'.* latents, not tokens"):
        TokenHeader.for_tokenizer(vae)
    fsq = Tokenizer.from_config(
        {
            "architecture": {"name": "conv", "config": {"in_channels": 1, "channels": [8, 16]}},
            "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
            "input_shape": [1, 28, 28],
        }
    )
    fsq.save(tmp_path / "fsq")
    assert isinstance(header_for_tokenizer(fsq), TokenHeader)
    with pytest.raises(ConfigError, match="--latent-dtype applies to continuous tokenizers only"):
        header_for_tokenizer(fsq, dtype="float16")
    with pytest.raises(TokError, match="discrete .*'fsq'.* tokens, not latents"):
        LatentHeader.for_tokenizer(fsq)


# --------------------------------------------------------------------------- ragged rows


def ragged_rows(grids, streams=1, size=16, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, size, (*grid, streams), generator=g) for grid in grids]


def test_ragged_file_round_trip_keeps_each_rows_grid_and_size(tmp_path):
    header = dataclasses.replace(make_header(codebook_sizes=(16,), grid=(16, 16)), ragged=True)
    rows = ragged_rows([(3, 5), (8, 8), (1, 2)])
    sizes = [[12, 18], [32, 32], [4, 7]]
    path = write_tokens(tmp_path / "r.safetensors", rows, keys=["a", "b", "c"], header=header,
                        sizes=sizes)  # fmt: skip
    tf = read_tokens(path)
    assert tf.header == header and tf.header.ragged and tf.keys == ["a", "b", "c"]
    assert tf.tokens.shape == (15 + 64 + 2, 1) and tf.tokens.dtype == torch.int64
    assert tf.grids.tolist() == [[3, 5], [8, 8], [1, 2]] and tf.sizes.tolist() == sizes
    assert all(torch.equal(a, b) for a, b in zip(tf.rows(), rows, strict=True))
    assert torch.equal(tf.row(1), rows[1])
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == RAGGED_FORMAT == "tok.tokens/4" and meta["ragged"] == "true"
        assert f.get_tensor("tokens").dtype == torch.uint8
    empty = write_tokens(tmp_path / "e.safetensors", [], keys=[], header=header)
    assert read_tokens(empty).grids.shape == (0, 2) and read_tokens(empty).tokens.shape == (0, 1)


def test_uniform_files_are_written_as_before_without_a_ragged_field(tmp_path):
    header = make_header()
    path = write_tokens(tmp_path / "u.safetensors", random_tokens(2, header), keys=["a", "b"],
                        header=header)  # fmt: skip
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "tok.tokens/2" and "ragged" not in f.metadata()
        assert list(f.keys()) == ["tokens"]
    assert "ragged" not in header.to_dict() and read_tokens(path).grids is None


def test_ragged_rows_that_do_not_fit_are_refused_naming_what(tmp_path):
    header = dataclasses.replace(make_header(codebook_sizes=(16,), grid=(4, 4)), ragged=True)
    rows = ragged_rows([(2, 2), (1, 3)])
    with pytest.raises(TokenFileError, match="ragged rows need sizes, 2 positive input sizes"):
        write_tokens(tmp_path / "x.safetensors", rows, keys=["a", "b"], header=header)
    with pytest.raises(TokenFileError, match="ragged rows are a list of tensors"):
        write_tokens(tmp_path / "x.safetensors", torch.zeros(2, 4, 4, 1, dtype=torch.long),
                     keys=["a", "b"], header=header, sizes=[[8, 8], [4, 12]])  # fmt: skip
    rows[1][0, 2, 0] = 16
    with pytest.raises(IndexRangeError, match="token index 16 in stream 0 of row 'b'"):
        write_tokens(tmp_path / "x.safetensors", rows, keys=["a", "b"], header=header,
                     sizes=[[8, 8], [4, 12]])  # fmt: skip
    assert not (tmp_path / "x.safetensors").exists()


def test_a_ragged_file_whose_grids_disagree_with_its_rows_is_refused(tmp_path):
    header = dataclasses.replace(make_header(codebook_sizes=(16,), grid=(4, 4)), ragged=True)
    path = tmp_path / "bad.safetensors"
    meta = header.to_metadata() | {"keys": '["a"]'}
    tensors = {"tokens": torch.zeros(5, 1, dtype=torch.uint8),
               "grids": torch.tensor([[2, 3]]), "sizes": torch.tensor([[8, 12]])}  # fmt: skip
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(TokenFileError, match="the grids of its 1 rows hold 6 positions, but"):
        read_tokens(path)
    save_file({"tokens": torch.zeros(5, 1, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(TokenFileError, match="has no 'grids' tensor"):
        read_tokens(path)
    save_file({"tokens": torch.zeros(1, 4, 4, 1, dtype=torch.uint8)}, str(path),
              metadata=meta | {"format": "tok.tokens/2"})  # fmt: skip
    with pytest.raises(TokenFileError, match="only files of format 'tok.tokens/4' hold ragged"):
        read_tokens(path)


def test_ragged_latent_files_round_trip_and_name_a_non_finite_rows_key(tmp_path):
    header = dataclasses.replace(make_latent_header(latent_dim=3, grid=(4, 4)), ragged=True)
    rows = [torch.randn(2, 3, 3), torch.randn(1, 5, 3)]
    path = write_tokens(tmp_path / "l.safetensors", rows, keys=["a", "b"], header=header,
                        sizes=[[8, 12], [4, 20]])  # fmt: skip
    tf = read_tokens(path)
    assert tf.kind == "latents" and tf.header.ragged and tf.tokens.shape == (11, 3)
    assert all(torch.equal(a, b) for a, b in zip(tf.rows(), rows, strict=True))
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "tok.tokens/4" and f.metadata()["kind"] == "latents"
    rows[1][0, 4, 1] = float("nan")
    with pytest.raises(TokenFileError, match="the first in row 'b'"):
        write_tokens(tmp_path / "n.safetensors", rows, keys=["a", "b"], header=header,
                     sizes=[[8, 12], [4, 20]])  # fmt: skip
