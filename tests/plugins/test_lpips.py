"""The ``lpips`` training loss: built through the registry like any loss, the one-line
error when its backbone weights are absent (also from ``tok train``), LPIPS values and
gradients with a torchvision-shaped backbone file (random weights), grayscale, video,
and a checkpoint that holds none of the frozen network."""

from __future__ import annotations

import os
from pathlib import Path

import lpips
import pytest
import torch
import torchvision
from conftest import RECIPE, TINY, one_error, photo_crops, tok_cli

from tok.components import build
from tok.errors import ConfigError, TokError
from tok.features import WeightsUnavailableError
from tok.losses import LossInputs


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TOK_LPIPS_WEIGHTS", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    return path


def inputs(x: torch.Tensor, recon: torch.Tensor) -> LossInputs:
    return LossInputs(inputs=x, reconstruction=recon, tokenizer=None, step=0)


def photos(n: int = 2, size: int = 64) -> torch.Tensor:
    return photo_crops(size, n)


def test_absent_weights_fail_at_construction_with_one_line(empty_torch_hub):
    with pytest.raises(WeightsUnavailableError) as info:
        build("losses", "lpips", {})
    message = str(info.value)
    assert "\n" not in message
    assert "vgg16-397923af.pth" in message and str(empty_torch_hub) in message
    assert "[losses.lpips] weights" in message and "$TOK_LPIPS_WEIGHTS" in message


def test_a_recipe_naming_it_fails_at_build_with_that_line(tmp_path, capsys, empty_torch_hub):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.read_text() + '\n[losses.lpips]\nnet = "alex"\n')
    out = tmp_path / "run"
    sets = [a for item in [*TINY, f"output.dir={out}"] for a in ("--set", item)]
    code, _, err = tok_cli(capsys, "train", recipe, *sets, "--no-progress")
    assert code != 0
    one_error(err, "alexnet-owt-7be5be79.pth", str(empty_torch_hub), "[losses.lpips] weights")
    assert not out.exists()  # nothing left behind


def test_unknown_net_is_named():
    with pytest.raises(ConfigError, match="net must be one of 'alex', 'vgg', got 'squeeze'"):
        build("losses", "lpips", {"net": "squeeze"})


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum):UserWarning")
def test_lpips_loss_values_gradients_and_weight(vgg_file):
    loss = build("losses", "lpips", {"weights": str(vgg_file), "weight": 0.5})
    reference = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    reference.load_state_dict(loss._model[0].state_dict())
    x = photos()
    recon = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    recon.requires_grad_(True)
    out = loss(inputs(x, recon))
    expected = reference(recon.detach(), x, normalize=True).mean()
    assert out.loss.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    out.loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert loss(inputs(x, x.clone())).loss.item() == 0.0
    assert loss.state_dict() == {}  # the frozen backbone is not checkpointed


def test_grayscale_and_video_inputs(vgg_file):
    loss = build("losses", "lpips", {"weights": str(vgg_file)})
    x = photos(n=4)
    recon = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    gray = loss(inputs(x[:, :1], recon[:, :1])).loss
    as_rgb = loss(inputs(x[:, :1].expand(-1, 3, -1, -1), recon[:, :1].expand(-1, 3, -1, -1))).loss
    assert gray.item() == pytest.approx(as_rgb.item(), rel=1e-6)
    video, recon_video = x.permute(1, 0, 2, 3)[None], recon.permute(1, 0, 2, 3)[None]
    frames = loss(inputs(x, recon)).loss  # (b c t h w): its 4 frames are the 4 photos
    assert loss(inputs(video, recon_video)).loss.item() == pytest.approx(frames.item(), rel=1e-6)
    with pytest.raises(TokError, match="RGB or grayscale inputs, got 2 channels"):
        loss(inputs(x[:, :2], recon[:, :2]))


def test_images_too_small_for_alexnet_are_named(tmp_path):
    alex = tmp_path / "alex.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alex)
    loss = build("losses", "lpips", {"net": "alex", "weights": str(alex)})
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(TokError, match="28×28-pixel images are too small for its alex backbone"):
        loss(inputs(x, x))


def test_training_with_it_keeps_the_backbone_out_of_the_checkpoint(tmp_path, capsys, vgg_file):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        RECIPE.read_text() + f'\n[losses.lpips]\nweights = "{vgg_file}"\nweight = 0.1\n'
    )
    out = tmp_path / "run"
    steps = ["train.steps=4", "train.batch_size=4", "train.eval_every=4", "train.eval_samples=8"]
    sets = [
        a
        for item in [*steps, "train.checkpoint_every=2", f"output.dir={out}"]
        for a in ("--set", item)
    ]
    code, stdout, err = tok_cli(capsys, "train", recipe, *sets, "--no-progress")
    assert code == 0, err
    from safetensors import safe_open

    with safe_open(str(out / "state.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "slice" in k or "lin0" in k]  # noqa: SIM118
    assert os.path.getsize(out / "state.safetensors") < 50e6  # no 528 MB VGG16 inside
