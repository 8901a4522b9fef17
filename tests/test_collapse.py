"""Posterior collapse of a VAE, provoked and cured on real MNIST, and ``tok inspect`` of a
continuous run.

One cheap configuration of the real ``vae_mnist`` recipe collapses: a strong decoder
(two hidden layers of 256), 32 latent dimensions, β = 8 from the first step and a
learning rate of 3e-3, 600 steps (about 10 s on one thread). With the same seed, KL
annealing (``kl_schedule = "linear"``) and free bits (``free_bits = 0.1``) keep more
dimensions active. Measured during development (test KL ≥ 0.01 nats on the first 2,000
test digits; seeds 0, 1):

- constant β = 8: 1 and 1 of 32 dimensions active (-ELBO 183.3, 182.6 nats);
- linear annealing over the first half: 12 and 4 active (-ELBO 169.7, 165.2);
- free bits 0.1 nats: 32 and 32 active (-ELBO 174.0, 169.4).

β = 2 collapsed this configuration when the MLP read its pixels in [-1, 1] (2, 2, 3 and
0 active over four seeds); reading them in [0, 1] (``mlp``'s ``unit_input``) it keeps
about 21 of 32, and β = 3-6 gave counts from 5 to 24 by seed: a continuum, not a gap.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from conftest import mnist_dir, one_error, tok_cli
from PIL import Image

from tok.health import PosteriorCollapseWarning
from tok.posterior import dimension_table, kl_history
from tok.recipe import load_recipe
from tok.run import Run
from tok.train import train

ROOT = Path(__file__).resolve().parents[1]
LATENT_DIM = 32
STEPS = 600
EVAL_SAMPLES = 2000
BETA = 8.0
#: the collapsing configuration (module docstring); each test changes one thing
COLLAPSE = [
    "model.hidden=[256, 256]",
    f"bottleneck.latent_dim={LATENT_DIM}",
    f"bottleneck.beta={BETA}",
    "train.lr=3e-3",
    f"train.steps={STEPS}",
    "train.log_every=100",
    f"train.eval_every={STEPS}",
    f"train.eval_samples={EVAL_SAMPLES}",
    f"train.checkpoint_every={STEPS}",
    "train.threads=1",
    "train.seed=0",
]
OUTPUTS = (Run.HEALTH_PNG, Run.KL_OVER_TIME_PNG, Run.HEALTH_JSON)


def train_vae(out: Path, *extra: str) -> tuple[dict, list[warnings.WarningMessage]]:
    """Train the collapsing configuration with ``extra`` overrides into ``out``; return
    the final evaluation and the posterior-collapse warnings training gave."""
    mnist_dir()
    recipe = load_recipe(
        ROOT / "recipes" / "vae_mnist.toml", [*COLLAPSE, *extra, f"output.dir='{out}'"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosteriorCollapseWarning)
        result = train(recipe, progress=False)
    return result.eval, [w for w in caught if issubclass(w.category, PosteriorCollapseWarning)]


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("collapse") / "collapsed"
    return (out, *train_vae(out))


@pytest.fixture(scope="module")
def annealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("collapse") / "annealed"
    return (out, *train_vae(out, 'bottleneck.kl_schedule="linear"', "bottleneck.kl_fraction=0.5"))


@pytest.fixture(scope="module")
def free_bits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("collapse") / "free_bits"
    return (out, *train_vae(out, "bottleneck.free_bits=0.1"))


# provoking it --------------------------------------------------------------------------


def test_a_strong_decoder_with_beta_8_collapses_most_dimensions(collapsed):
    run, result, caught = collapsed
    inactive = result["inactive"]
    assert result["latent_dim"] == LATENT_DIM and result["images"] == EVAL_SAMPLES
    assert result["active_dims"] <= 4, result["kl_dims"]  # seeds 0, 1: 1, 1
    assert len(inactive) == LATENT_DIM - result["active_dims"] >= 24
    assert all(result["kl_dims"][j] < 0.01 for j in inactive)
    assert result["active_threshold"] == 0.01  # the recipe's train.active_threshold
    # training said so, naming the inactive dimensions (twelve, then a count)
    assert len(caught) == 1
    message = str(caught[0].message)
    shown = ", ".join(map(str, inactive[:12])) + f" and {len(inactive) - 12} more"
    assert f"at step {STEPS}: {len(inactive)} of {LATENT_DIM} latent dimensions inactive" in message
    assert f"({shown}: KL < 0.01 nats on {EVAL_SAMPLES} test images)" in message
    assert "kl_schedule" in message and "free_bits" in message
    assert f"see `tok inspect {run}`" in message


# curing it -----------------------------------------------------------------------------


def test_kl_annealing_keeps_more_dimensions_active(collapsed, annealed):
    _, base, _ = collapsed
    _, cured, caught = annealed
    # seeds 0, 1: 12, 4 active against 1, 1 at constant beta
    assert cured["active_dims"] >= base["active_dims"] + 3, (cured["kl_dims"], base["kl_dims"])
    assert cured["neg_elbo"] < base["neg_elbo"] - 10  # 169.7, 165.2 nats against 183.3, 182.6
    # annealing delays collapse, it does not forbid it: the others are still named
    assert len(caught) == (1 if cured["inactive"] else 0)


def test_free_bits_keep_more_dimensions_active(collapsed, free_bits):
    _, base, _ = collapsed
    _, cured, caught = free_bits
    # seeds 0, 1: all 32 active against 1, 1 without free bits
    assert cured["active_dims"] >= base["active_dims"] + 16, (cured["kl_dims"], base["kl_dims"])
    assert len(caught) == (1 if cured["inactive"] else 0)


# tok inspect of a continuous run ---------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_inspect_a_collapsed_run(capsys, collapsed, tmp_path):
    run, result, _ = collapsed
    out = tmp_path / "health"
    code, text, err = tok_cli(capsys, "inspect", run, "--samples", EVAL_SAMPLES, "--out", out)
    assert code == 0, err
    report = json.loads((out / Run.HEALTH_JSON).read_text())
    # the training's last evaluation, on the same images, in the same numbers
    assert report["images"] == EVAL_SAMPLES and report["split"] == "test"
    assert report["bottleneck"] == "gaussian" and report["stochastic"] is True
    assert report["latent_dim"] == LATENT_DIM and report["threshold"] == 0.01
    assert report["kl_dims"] == pytest.approx(result["kl_dims"], abs=1e-5)
    assert report["inactive"] == result["inactive"]
    assert report["active_dims"] == result["active_dims"]
    for key in ("kl", "recon_nll", "neg_elbo", "psnr"):
        assert report[key] == pytest.approx(result[key], rel=1e-4), key
    # KL and beta over training: a point per train row and per test row of the log
    history = report["history"]
    assert history["train"]["step"] == list(range(100, STEPS + 1, 100))
    assert history["train"]["beta"] == [BETA] * 6  # constant: beta from the first step
    assert all(0 <= n <= LATENT_DIM for n in history["train"]["active_dims"])
    assert history["test"]["step"] == [STEPS]
    assert history["test"]["active_dims"] == [result["active_dims"]]
    assert history["test"]["kl"] == [pytest.approx(result["kl"])]
    # what it prints: a row per dimension, the count, the inactive ones and the cures
    lines = text.splitlines()
    assert lines[0].startswith(f"{run}: latent dimensions of collapsed (gaussian, 32 dimensions)")
    header = lines.index("DIM  KL (NATS)  SHARE  STATUS")
    rows = [line.split() for line in lines[header + 2 : header + 2 + LATENT_DIM]]
    assert [r[0] for r in rows] == [str(j) for j in range(LATENT_DIM)]
    assert [j for j, r in enumerate(rows) if r[3] == "INACTIVE"] == report["inactive"]
    assert [float(r[1]) for r in rows] == pytest.approx(report["kl_dims"], abs=5e-5)
    count = f"{report['active_dims']} of 32 latent dimensions active (KL ≥ 0.01 nats, "
    assert any(line.startswith(count) for line in lines), text
    inactive = ", ".join(map(str, report["inactive"]))
    assert (
        f"INACTIVE: {len(report['inactive'])} dimension(s), KL < 0.01 nats: {inactive} — " in text
    )
    assert "bottleneck.kl_schedule" in text and "bottleneck.free_bits" in text
    # the charts: KL per dimension and three panels over time, real PNGs; the run untouched
    assert png_size(out / Run.HEALTH_PNG) == (640, 400)
    assert png_size(out / Run.KL_OVER_TIME_PNG) == (640, 640)
    assert not any((run / name).exists() for name in OUTPUTS)
    assert report["files"] == {
        "kl_per_dimension": str(out / Run.HEALTH_PNG),
        "kl_over_time": str(out / Run.KL_OVER_TIME_PNG),
        "json": str(out / Run.HEALTH_JSON),
    }

    code, as_json, err = tok_cli(
        capsys, "inspect", run, "--samples", 100, "--out", out, "--threshold", 0, "--json"
    )
    assert code == 0, err
    report = json.loads(as_json)
    assert report == json.loads((out / Run.HEALTH_JSON).read_text())
    assert report["threshold"] == 0 and report["inactive"] == [] and report["active_dims"] == 32
    assert report["images"] == 100


def test_inspect_an_annealed_run_into_its_folder(capsys, annealed):
    run, result, _ = annealed
    code, text, err = tok_cli(capsys, "inspect", run, "--samples", 500)
    assert code == 0, err
    assert all((run / name).is_file() for name in OUTPUTS)
    report = json.loads((run / Run.HEALTH_JSON).read_text())
    # linear: 0 to 2 over the first 300 steps; the row of step s logs the weight of step s - 1
    beta = report["history"]["train"]["beta"]
    assert beta[:3] == pytest.approx([BETA * 99 / 300, BETA * 199 / 300, BETA * 299 / 300])
    assert beta[3:] == [BETA] * 3
    assert beta == sorted(beta)
    assert report["images"] == 500


def test_inspect_a_continuous_run_refuses_a_negative_threshold(capsys, collapsed, tmp_path):
    run, _, _ = collapsed
    for bad in ("-0.5", "nan", "inf"):
        code, out, err = tok_cli(capsys, "inspect", run, "--threshold", bad, "--out", tmp_path)
        assert code != 0 and out == ""
        one_error(err, "--threshold", "nats", bad)
    assert not any((tmp_path / name).exists() for name in OUTPUTS)
    # a threshold above 1 is fine in nats (a fraction for a discrete run)
    code, _, err = tok_cli(
        capsys, "inspect", run, "--threshold", 5, "--samples", 50, "--out", tmp_path, "--json"
    )
    assert code == 0, err
    assert json.loads((tmp_path / Run.HEALTH_JSON).read_text())["active_dims"] == 0


# the pieces ------------------------------------------------------------------------------


def test_kl_history_counts_active_dimensions_against_the_threshold():
    rows = [
        {"step": 10, "split": "train", "kl": 3.0, "beta": 0.5, "kl_dim0": 2.0, "kl_dim1": 0.02},
        {"step": 10, "split": "test", "kl": 2.5, "kl_dims": [2.4, 0.005], "active_dims": 1},
        {"step": 20, "split": "train", "loss": 1.0},  # a row without the VAE's metrics
        {"step": 20, "split": "test", "kl": 2.0, "active_dims": 1},  # without kl_dims
    ]
    assert kl_history(rows, 0.01) == {
        "train": {
            "step": [10, 20],
            "kl": [3.0, None],
            "beta": [0.5, None],
            "active_dims": [2, None],
        },
        "test": {"step": [10, 20], "kl": [2.5, 2.0], "active_dims": [1, 1]},
    }
    assert kl_history(rows, 0.001)["test"]["active_dims"] == [2, 1]  # recounted where it can
    assert kl_history(rows, 0.1)["train"]["active_dims"] == [1, None]
    assert kl_history([], 0.01) == {
        "train": {"step": [], "kl": [], "beta": [], "active_dims": []},
        "test": {"step": [], "kl": [], "active_dims": []},
    }


def test_dimension_table():
    headers, rows = dimension_table([0.75, 0.25, 0.004], 0.01)
    assert headers == ["DIM", "KL (NATS)", "SHARE", "STATUS"]
    assert rows == [
        ["0", "0.7500", "74.7%", "active"],
        ["1", "0.2500", "24.9%", "active"],
        ["2", "0.0040", "0.4%", "INACTIVE"],
    ]
    headers, rows = dimension_table([0.0, 0.0], None)  # deterministic: no verdict
    assert headers == ["DIM", "KL (NATS)", "SHARE"] and rows == [
        ["0", "0.0000", "-"],
        ["1", "0.0000", "-"],
    ]
