"""tok.testing.check_bottleneck: every registered continuous bottleneck passes it, and
each deliberately broken bottleneck below fails it, naming the promise."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from tok.bottleneck import ContinuousBottleneck, LatentOutput
from tok.quantizer import Projection
from tok.registry import registry
from tok.testing import check_bottleneck


@pytest.mark.parametrize("name", registry("bottlenecks").names())
def test_every_registered_bottleneck_conforms(name: str) -> None:
    check_bottleneck(name)


class Deterministic(ContinuousBottleneck):
    """A plain autoencoder's bottleneck: a projection to ``latent_dim`` and back, KL 0."""

    def __init__(self, *, dim: int = 6, latent_dim: int = 3) -> None:
        super().__init__(dim=dim, latent_dim=latent_dim)
        self.down, self.up = Projection(dim, latent_dim), Projection(latent_dim, dim)

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        return {"dim": 6, "latent_dim": 3}

    def forward(self, z: Tensor) -> LatentOutput:
        self.check_input(z)
        with torch.autocast(z.device.type, enabled=False):  # float32 under autocast too
            mean = self.down(z)
            latent = self.up(mean)
        kl = torch.zeros_like(mean)
        return LatentOutput(latent, mean, kl, mean.new_zeros(()), {})

    def latent_to_codes(self, latent: Tensor) -> Tensor:
        self.check_latent(latent)
        with torch.autocast(latent.device.type, enabled=False):
            return self.up(latent)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "latent_dim": self.latent_dim}


def test_a_correct_deterministic_bottleneck_conforms() -> None:
    check_bottleneck(Deterministic)


class SamplesInEval(Deterministic):
    def forward(self, z: Tensor) -> LatentOutput:
        out = super().forward(z)
        noisy = out.latent + torch.randn_like(out.latent)
        return LatentOutput(noisy, out.mean, out.kl, out.aux_loss, {})


class NegativeKL(Deterministic):
    def forward(self, z: Tensor) -> LatentOutput:
        out = super().forward(z)
        return LatentOutput(out.latent, out.mean, out.kl - 1, out.aux_loss, {})


class CodesDisagree(Deterministic):
    def latent_to_codes(self, latent: Tensor) -> Tensor:
        return super().latent_to_codes(latent) * 2


class NoInputCheck(Deterministic):
    def check_input(self, z: Tensor) -> None:
        pass  # the wrong width then fails inside the projection, not as a TokError


class LosesConfig(Deterministic):
    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "latent_dim": 2}  # not what it was built with


@pytest.mark.parametrize(
    ("cls", "promise"),
    [
        (SamplesInEval, "eval mode is deterministic"),
        (NegativeKL, "kl is finite and ≥ 0"),
        (CodesDisagree, "latent_to_codes(mean) equals latent in eval mode"),
        (NoInputCheck, "a wrong input dim raises TokError"),
        (LosesConfig, "cls(**config()) rebuilds the bottleneck"),
    ],
)
def test_a_broken_bottleneck_fails_naming_the_promise(cls: type, promise: str) -> None:
    with pytest.raises(AssertionError, match="ContinuousBottleneck contract") as info:
        check_bottleneck(cls)
    assert promise in str(info.value)
