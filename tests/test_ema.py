"""Tests for tok.ema: the update rule, its warm-up, and what a run with EMA writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from safetensors.torch import load_file
from torch import nn

from tok.ema import EMA
from tok.errors import CheckpointError, RecipeError
from tok.models import Tokenizer
from tok.recipe import load_recipe
from tok.run import Run
from tok.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_each_update_moves_the_average_by_the_warmed_up_decay_and_copies_buffers():
    model = nn.BatchNorm1d(3)
    ema = EMA(model, decay=0.99)
    start = model.weight.detach().clone()
    assert [ema.decay_at(n) for n in (0, 1, 100, 10_000)] == [
        pytest.approx(1 / 10),
        pytest.approx(2 / 11),
        pytest.approx(101 / 110),
        0.99,
    ]
    with torch.no_grad():
        model.weight.add_(1.0)
        model.running_mean.fill_(7.0)
    ema.update(model)  # d = 0.1: 0.1 * old + 0.9 * new
    assert torch.allclose(ema.model.weight, 0.1 * start + 0.9 * (start + 1))
    assert torch.equal(ema.model.running_mean, torch.full((3,), 7.0))
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model)  # d = 2/11
    d = 2 / 11
    assert torch.allclose(ema.model.weight, d * before + (1 - d) * model.weight)
    assert int(ema.updates) == 2
    assert not any(p.requires_grad for p in ema.model.parameters())
    ema.train()
    assert not ema.model.training


def test_a_decay_outside_zero_one_is_refused_in_the_recipe():
    with pytest.raises(RecipeError, match=r"ema_decay: must be a number in \[0, 1\)"):
        load_recipe(ROOT / "recipes/fsq_mnist.toml", ["train.ema_decay=1.0"])


def _recipe(tmp_path, name, *extra):
    return tiny_recipe(tmp_path / name, *extra, steps=4)


def test_a_run_with_ema_saves_the_average_as_its_tokenizer_and_the_trained_weights_in_raw(
    tmp_path,
):
    result = train(_recipe(tmp_path, "run", "train.ema_decay=0.5"), progress=False)
    state = load_file(result.run_dir / "state.safetensors")
    averaged = load_file(result.run_dir / "model.safetensors")
    raw = load_file(result.run_dir / "raw" / "model.safetensors")
    for key in averaged:
        assert torch.equal(averaged[key], state[f"ema.model.{key}"]), key
        assert torch.equal(raw[key], state[f"model.{key}"]), key
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    # both folders load as tokenizers; the run's is the average
    run_tok = Run.open(result.run_dir).tokenizer()
    assert torch.equal(run_tok.state_dict()[next(iter(averaged))], averaged[next(iter(averaged))])
    Tokenizer.load(result.run_dir / "raw")


def test_turning_ema_on_at_resume_is_refused(tmp_path):
    stopped = train(_recipe(tmp_path, "run"), progress=False, stop_after=2)
    recipe = Run.open(stopped.run_dir).recipe(["train.ema_decay=0.9"])
    with pytest.raises(CheckpointError, match=r"train.ema_decay \(0.9 here, 0.0 in the run\)"):
        train(recipe, resume=True, progress=False)
