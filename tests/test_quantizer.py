"""The Quantizer base class helpers (tok.quantizer)."""

from __future__ import annotations

import math

import pytest
import torch

from tok import Quantizer, TokError
from tok.errors import ConfigError, IndexRangeError


def make(sizes=(16, 1000), dim=4) -> Quantizer:
    return Quantizer(dim=dim, codebook_sizes=sizes)


def test_num_streams_and_bits_per_position() -> None:
    q = make((16, 1000, 2))
    assert q.num_streams == 3
    assert q.codebook_sizes == (16, 1000, 2)
    assert q.bits_per_position == pytest.approx(4 + math.log2(1000) + 1)
    assert make((1024,)).bits_per_position == 10


def test_example_config_default() -> None:
    assert Quantizer.example_config() == {"dim": 8}


@pytest.mark.parametrize("dim", [0, -1, 2.0, "8", None])
def test_bad_dim_is_a_config_error(dim) -> None:
    with pytest.raises(ConfigError, match="dim must be a positive integer"):
        Quantizer(dim=dim, codebook_sizes=(4,))


def test_check_indices_accepts_valid_and_returns_int64() -> None:
    q = make()
    idx = torch.tensor([[[0, 999], [15, 0]]], dtype=torch.int32)
    out = q.check_indices(idx)
    assert out.dtype == torch.int64
    assert torch.equal(out, idx.long())
    assert q.check_indices(torch.zeros(0, 3, 2, dtype=torch.int64)).shape == (0, 3, 2)


@pytest.mark.parametrize(
    ("stream", "value", "size"), [(0, 16, 16), (1, 1000, 1000), (0, -1, 16), (1, -5, 1000)]
)
def test_check_indices_out_of_range_names_stream_value_and_size(stream, value, size) -> None:
    q = make()
    idx = torch.zeros(2, 3, 2, dtype=torch.int64)
    idx[1, 2, stream] = value
    with pytest.raises(IndexRangeError) as info:
        q.check_indices(idx)
    message = str(info.value)
    assert f"token index {value} in stream {stream}" in message
    assert f"codebook size {size}" in message
    assert f"0..{size - 1}" in message
    assert isinstance(info.value, TokError)


def test_check_indices_wrong_dtype_and_shape() -> None:
    q = make()
    with pytest.raises(IndexRangeError, match="must be integers, got torch.float32"):
        q.check_indices(torch.zeros(2, 3, 2))
    with pytest.raises(IndexRangeError, match="must be integers"):
        q.check_indices(torch.zeros(2, 3, 2, dtype=torch.bool))
    with pytest.raises(IndexRangeError, match=r"shape \(batch, \*grid, 2\), got \(2, 3, 3\)"):
        q.check_indices(torch.zeros(2, 3, 3, dtype=torch.int64))
    with pytest.raises(IndexRangeError, match="got \\(5,\\)"):
        q.check_indices(torch.zeros(5, dtype=torch.int64))


def test_check_input() -> None:
    q = make(dim=4)
    q.check_input(torch.zeros(2, 3, 4))
    q.check_input(torch.zeros(2, 4, dtype=torch.bfloat16))
    with pytest.raises(ConfigError, match=r"\(batch, \*grid, 4\), got \(2, 3, 5\)"):
        q.check_input(torch.zeros(2, 3, 5))
    with pytest.raises(ConfigError, match="torch.int64"):
        q.check_input(torch.zeros(2, 3, 4, dtype=torch.int64))
    with pytest.raises(ConfigError):
        q.check_input(torch.zeros(4))
