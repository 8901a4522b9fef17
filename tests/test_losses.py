"""Training losses are plugins (tok.losses, hook ``register_losses``): built-ins, recipe
tables, and a third-party loss with state of its own that checkpoints and resumes exactly."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import tok
from tok import hookimpl
from tok.errors import RecipeError
from tok.losses import Loss, LossInputs, LossOutput
from tok.recipe import parse_recipe
from tok.registry import register_plugin, registry, unregister_plugin
from tok.run import Run
from tok.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "steps": 6,
    "batch_size": 8,
    "eval_samples": 16,
    "eval_every": 3,
    "checkpoint_every": 3,
    "log_every": 1,
    "warmup_steps": 2,
    "collapse_threshold": 0.0,
}


def recipe(out: Path, losses: dict | None = None, **train_keys):
    data = tomllib.loads((ROOT / "recipes" / "fsq_mnist.toml").read_text())
    data["model"]["channels"] = [8, 16]
    data["train"] = {**TINY, **train_keys}
    data["output"] = {"dir": str(out), "samples": 4}
    if losses is not None:
        data["losses"] = losses
    return parse_recipe(data, name="losses_test")


class Critic(Loss):
    """A toy adversary with state of its own: a linear critic scoring reconstructions,
    trained with its own Adam in :meth:`update` (as a GAN discriminator is)."""

    def __init__(self, *, weight: float = 1.0, lr: float = 0.01) -> None:
        super().__init__(weight=weight)
        self.critic = nn.Linear(28 * 28, 1)
        self.lr = lr
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, batch: LossInputs) -> LossOutput:
        score = self.critic(batch.reconstruction.flatten(1)).mean()
        return LossOutput(loss=self.weight * -score, metrics={"score": float(score.detach())})

    def update(self, batch: LossInputs) -> dict[str, float]:
        real = self.critic(batch.inputs.flatten(1)).mean()
        fake = self.critic(batch.reconstruction.flatten(1)).mean()
        loss = fake - real
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.updates += 1
        return {"critic_loss": float(loss.detach())}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}


class CriticPlugin:
    @hookimpl
    def register_losses(register):
        register(Critic, name="critic")


@pytest.fixture
def critic_plugin():
    register_plugin(CriticPlugin, name="critic-plugin")
    yield
    unregister_plugin("critic-plugin")


def test_register_losses_builtin_reconstruction_losses():
    assert {"mse", "l1"} <= set(tok.list_losses())
    assert registry("losses").entry("mse").owner == "losses"
    x = torch.rand(2, 1, 4, 4)
    batch = LossInputs(inputs=x, reconstruction=x + 0.5, tokenizer=None, step=0)
    assert tok.get_loss("mse")(weight=2.0)(batch).loss.item() == pytest.approx(0.5)
    assert tok.get_loss("l1")()(batch).loss.item() == pytest.approx(0.5)


def test_loss_tables_are_checked_with_the_rest_of_the_recipe(tmp_path):
    with pytest.raises(RecipeError) as info:
        recipe(
            tmp_path,
            {"lpisp": {}, "mse": {}, "l1": {"weigth": 1.0}},
            loss="mes",
        )
    problems = info.value.problems
    assert any("[train] loss" in p and "'mes'" in p and "mse" in p for p in problems)
    assert any("[losses.lpisp]" in p and "unknown loss" in p for p in problems)
    assert any("[losses.l1]" in p and "weigth" in p for p in problems)
    # 'mse' is only a duplicate when it is the reconstruction loss
    with pytest.raises(RecipeError, match=r"\[losses.mse\].*already the reconstruction loss"):
        recipe(tmp_path, {"mse": {}})


def test_a_plugin_loss_trains_logs_and_resumes_exactly(tmp_path, critic_plugin):
    losses = {"critic": {"weight": 0.01, "lr": 0.02}}
    straight = train(recipe(tmp_path / "a", losses), progress=False)
    stopped = train(recipe(tmp_path / "b", losses), progress=False, stop_after=3)
    assert stopped.step == 3
    resumed = train(Run.open(stopped.run_dir).recipe(), resume=True, progress=False)
    assert resumed.step == 6
    # the tokenizer and everything the loss owns continue exactly
    a = load_file(straight.run_dir / "state.safetensors")
    b = load_file(resumed.run_dir / "state.safetensors")
    assert a.keys() == b.keys()
    assert {"loss/critic/model.critic.weight", "loss/critic/model.updates"} <= a.keys()
    assert any(k.startswith("loss/critic/optim/adam.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["loss/critic/model.updates"]) == 6
    # the resolved recipe keeps the table; each step logs the loss's own numbers
    assert Run.open(resumed.run_dir).recipe().losses[0].options == {"weight": 0.01, "lr": 0.02}
    rows = [json.loads(r) for r in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert set(train_rows[0]["losses"]) == {"mse", "critic"}
    assert {"loss", "score", "critic_loss"} <= set(train_rows[0]["losses"]["critic"])


def test_bernoulli_nll_from_logits_equals_torch_bce_of_their_sigmoid_and_its_gradient():
    from tok.components import build

    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    logits = (torch.randn(4, 1, 28, 28) * 6).requires_grad_(True)
    loss = build("losses", "bernoulli_nll", {})
    fast = loss(LossInputs(x, torch.sigmoid(logits), None, 0, logits)).loss
    (grad,) = torch.autograd.grad(fast, logits)
    ref_logits = logits.detach().double().requires_grad_(True)
    ref = F.binary_cross_entropy_with_logits(ref_logits, x.double(), reduction="sum") / 4
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)
    # without logits: torch's BCE of the reconstruction (equal where sigmoid does not saturate)
    mild = logits.detach() / 6
    slow = loss(LossInputs(x, torch.sigmoid(mild), None, 0)).loss
    exact = F.binary_cross_entropy_with_logits(mild.double(), x.double(), reduction="sum") / 4
    assert slow.item() == pytest.approx(exact.item(), rel=1e-5)


def test_gaussian_nll_is_the_normal_log_density_summed_over_pixels():
    from tok.components import build

    torch.manual_seed(0)
    x, recon = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    value = build("losses", "gaussian_nll", {"sigma": 0.2})(LossInputs(x, recon, None, 0)).loss
    normal = torch.distributions.Normal(recon.double(), 0.2)
    assert value.item() == pytest.approx(-normal.log_prob(x.double()).sum().item() / 3, rel=1e-6)
