"""The mlp architecture: the lecture's VAE body, parameter for parameter."""

from __future__ import annotations

import pytest
import torch

from tok.errors import ConfigError
from tok.models import Tokenizer
from tok.plugins.mlp import MLP


def _vae(latent_dim: int = 20, hidden=(400,)) -> Tokenizer:
    return Tokenizer.from_config(
        {
            "architecture": {"name": "mlp", "config": {"hidden": list(hidden)}},
            "bottleneck": {"name": "gaussian", "config": {"latent_dim": latent_dim}},
            "input_shape": [1, 28, 28],
        }
    )


def test_the_lecture_model_has_its_parameter_count():
    # fc1 784x400, fc21/fc22 400x20 each, fc3 20x400, fc4 400x784, with biases
    lecture = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.numel() for p in _vae().parameters()) == lecture == 652_824


def test_the_encoder_reads_the_pixels_in_unit_range_and_the_image_is_the_sigmoid_of_the_logits():
    torch.manual_seed(0)
    tokenizer = _vae().eval()
    x = torch.rand(3, 1, 28, 28)
    first = tokenizer.architecture.encoder[0]
    hidden = torch.relu(x.flatten(1) @ first.weight.T + first.bias)
    assert torch.allclose(tokenizer.architecture.encode(tokenizer.to_input(x))[:, 0], hidden)
    out = tokenizer(x)
    assert out.logits is not None and torch.equal(out.reconstruction, torch.sigmoid(out.logits))
    assert torch.equal(tokenizer.decode(tokenizer.encode(x)), out.reconstruction.clamp(0, 1))


def test_a_linear_output_has_no_logits():
    tokenizer = Tokenizer.from_config(
        {
            "architecture": {"name": "mlp", "config": {"hidden": [32], "output": "linear"}},
            "bottleneck": {"name": "gaussian", "config": {"latent_dim": 4}},
            "input_shape": [1, 8, 8],
        }
    )
    assert tokenizer(torch.rand(2, 1, 8, 8)).logits is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden": []}, "hidden must list at least one width"),
        ({"hidden": [0]}, "hidden must list at least one width"),
        ({"output": "softmax"}, "output must be 'sigmoid' or 'linear'"),
        ({"image_size": [28]}, "image_size must be"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        MLP(**options)


def test_another_image_size_is_refused_naming_both():
    with pytest.raises(ConfigError, match="built for one input size, 1x28x28; got 1x32x32"):
        MLP().grid((1, 32, 32))
