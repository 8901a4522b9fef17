"""tok.data.base: where datasets live, uint8 conversion, channel conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tok.data import Samples, data_root
from tok.data.base import to_channels
from tok.errors import DatasetError
from tok.media import to_uint8


def test_to_uint8_rounds_to_nearest_and_clamps():
    x = torch.tensor(
        [0.0, 1.0, 0.4 / 255, 0.6 / 255, 254.4 / 255, 254.6 / 255, 100.49 / 255, -0.3, 1.7]
    )
    assert to_uint8(x).tolist() == [0, 255, 0, 1, 254, 255, 100, 0, 255]
    assert to_uint8(x).dtype == torch.uint8


def test_to_uint8_inverts_the_float_view_of_every_byte():
    every = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    samples = Samples(images=every, keys=["all"])
    assert torch.equal(to_uint8(samples.floats()), every)
    assert samples.floats().dtype == torch.float32
    assert samples.floats().max() == 1.0


def test_to_channels():
    gray = torch.tensor([[[[0, 128], [255, 7]]]], dtype=torch.uint8)
    rgb = to_channels(gray, 3)
    assert rgb.shape == (1, 3, 2, 2)
    assert all(torch.equal(rgb[:, c : c + 1], gray) for c in range(3))
    assert to_channels(gray, 1) is gray and to_channels(gray, None) is gray

    color = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    assert to_channels(color, 1).item() == round(0.299 * 255)
    # gray -> rgb -> gray is the identity
    assert torch.equal(to_channels(rgb, 1), gray)
    with pytest.raises(DatasetError, match="4-channel"):
        to_channels(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), 3)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TOK_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # the argument wins
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    # then $TOK_DATA_DIR
    assert data_root() == tmp_path / "env"
    assert data_root(None) == tmp_path / "env"
    # then $XDG_CACHE_HOME/tok/data
    monkeypatch.delenv("TOK_DATA_DIR")
    assert data_root() == tmp_path / "xdg" / "tok" / "data"
    # then ~/.cache/tok/data
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "tok" / "data"
    # an empty variable counts as unset
    monkeypatch.setenv("TOK_DATA_DIR", "")
    assert data_root() == tmp_path / "home" / ".cache" / "tok" / "data"


def test_data_root_expands_the_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TOK_DATA_DIR", "~/datasets")
    assert data_root() == tmp_path / "datasets"
    assert data_root("~/mine") == Path(tmp_path / "mine")
