"""tok.pretrained: LPIPS's and rFID's weights found offline (torch hub's checkpoints folder,
a named file, an environment variable), read as plain tensors, and one clear line when
they are absent. The backbones are torchvision-shaped state dicts made here (random
weights: the loading path is what is tested, not the ImageNet values)."""

from __future__ import annotations

import collections
from pathlib import Path

import lpips
import pytest
import torch
import torchvision
from conftest import fidelity_inception_file, torchvision_alexnet_file

from tok.errors import TokError
from tok.features import WeightsUnavailableError
from tok.pretrained import (
    INCEPTION_FILE,
    INCEPTION_URL,
    checkpoints_dir,
    inception_fid,
    lpips_network,
)


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TOK_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("TOK_INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> Path:
    return torchvision_alexnet_file(tmp_path_factory.mktemp("alex") / "alexnet-owt-7be5be79.pth")


def test_checkpoints_dir_follows_torch_home(empty_torch_hub):
    assert checkpoints_dir() == empty_torch_hub


@pytest.mark.parametrize(
    ("net", "file"), [("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")]
)
def test_absent_lpips_weights_name_the_file_the_url_and_the_folder(empty_torch_hub, net, file):
    with pytest.raises(WeightsUnavailableError) as info:
        lpips_network(net)
    message = str(info.value)
    assert "\n" not in message
    assert file in message and f"https://download.pytorch.org/models/{file}" in message
    assert str(empty_torch_hub) in message
    assert "--lpips-weights" in message and "$TOK_LPIPS_WEIGHTS" in message


def test_absent_inception_weights_name_the_file_the_url_and_the_folder(empty_torch_hub):
    with pytest.raises(WeightsUnavailableError) as info:
        inception_fid()
    message = str(info.value)
    assert "\n" not in message
    assert INCEPTION_FILE in message and INCEPTION_URL in message
    assert str(empty_torch_hub) in message and "--inception-weights" in message


def test_a_named_file_that_does_not_exist_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsUnavailableError, match=f"no weight file at {missing} \\(given\\)"):
        lpips_network("alex", weights=missing)
    monkeypatch.setenv("TOK_INCEPTION_WEIGHTS", str(missing))
    with pytest.raises(WeightsUnavailableError, match="named by \\$TOK_INCEPTION_WEIGHTS"):
        inception_fid()


def check_alexnet_loaded(model: torch.nn.Module, path: Path) -> None:
    saved = torch.load(path, weights_only=True)
    state = model.state_dict()
    assert torch.equal(state["net.slice1.0.weight"], saved["features.0.weight"])
    assert torch.equal(state["net.slice5.10.bias"], saved["features.10.bias"])
    linear = torch.load(
        Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth",
        weights_only=True,
        map_location="cpu",
    )
    assert torch.equal(state["lin3.model.1.weight"], linear["lin3.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_lpips_loads_a_torchvision_state_dict_from_each_place(
    alexnet_file, empty_torch_hub, monkeypatch
):
    check_alexnet_loaded(lpips_network("alex", weights=alexnet_file), alexnet_file)
    monkeypatch.setenv("TOK_LPIPS_WEIGHTS", str(alexnet_file))
    check_alexnet_loaded(lpips_network("alex"), alexnet_file)
    monkeypatch.delenv("TOK_LPIPS_WEIGHTS")
    empty_torch_hub.mkdir(parents=True)
    (empty_torch_hub / alexnet_file.name).write_bytes(alexnet_file.read_bytes())
    model = lpips_network("alex")
    check_alexnet_loaded(model, alexnet_file)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(x, x, normalize=True).flatten().tolist() == [0.0, 0.0]
        assert (model(x, x.flip(-1), normalize=True) > 0).all()


class NotATensor:
    """Any object a pickle could rebuild (and run code while doing so)."""


def test_a_weight_file_holding_anything_but_tensors_is_refused(tmp_path):
    code = tmp_path / "code.pth"
    torch.save({"features.0.weight": NotATensor()}, code)
    with pytest.raises(TokError, match=f"cannot read {code} as plain tensors"):
        lpips_network("alex", weights=code)
    words = tmp_path / "words.pth"
    torch.save(collections.OrderedDict(note="hello"), words)
    with pytest.raises(TokError, match=f"{words} does not hold a state dict of tensors"):
        lpips_network("alex", weights=words)
    with pytest.raises(TokError, match=f"cannot read {code} as plain tensors"):
        inception_fid(weights=code)  # refused before torch-fidelity's own unpickling


def test_another_networks_weights_are_named(tmp_path):
    vgg = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), vgg)
    with pytest.raises(
        TokError, match="does not hold torchvision's alex weights \\(features.0.weight missing"
    ):
        lpips_network("alex", weights=vgg)
    with pytest.raises(TokError, match="unknown LPIPS network 'squeeze'; choose one of alex, vgg"):
        lpips_network("squeeze")


def test_inception_fid_loads_checked_weights(tmp_path, monkeypatch):
    """A torch-fidelity-shaped InceptionV3 state dict (random weights, built with its
    download stubbed out) goes through tok's check and into torchmetrics' metric."""
    path = fidelity_inception_file(tmp_path / INCEPTION_FILE, monkeypatch)
    state = torch.load(path, weights_only=True)
    metric = inception_fid(weights=path)
    loaded = metric.inception.state_dict()
    assert torch.equal(loaded["Conv2d_1a_3x3.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    metric.update(x, real=True)
    metric.update(x, real=False)
    assert abs(float(metric.compute())) < 1e-2
