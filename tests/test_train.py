"""Tests for tok.train: run folders, checkpoints, resume, schedule, collapse warning."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tok import hookimpl
from tok.errors import CheckpointError, OutputDirError, TrainingError
from tok.losses import Loss, LossInputs, LossOutput
from tok.models import Tokenizer
from tok.recipe import load_recipe
from tok.registry import register_plugin, unregister_plugin
from tok.run import Run
from tok.train import CollapseWarning, lr_at, train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.channels=[8, 16]",
    "train.steps=6",
    "train.batch_size=8",
    "train.eval_samples=32",
    "train.eval_every=3",
    "train.checkpoint_every=3",
    "train.log_every=1",
    "train.warmup_steps=2",
    "output.samples=8",
    "train.collapse_threshold=0.0",  # 32 images cannot use 1000 codes; tested on its own below
]


def tiny(tmp_path: Path, *extra: str, name: str = "run"):
    return load_recipe(
        ROOT / "recipes/fsq_mnist.toml", [*TINY, f"output.dir='{tmp_path / name}'", *extra]
    )


def test_run_folder_contents(tmp_path):
    result = train(tiny(tmp_path), progress=False)
    run = result.run_dir
    assert result.step == 6
    for name in [
        "recipe.toml",
        "model.safetensors",
        "tokenizer.json",
        "state.safetensors",
        "state.json",
        "metrics.jsonl",
        "recon.png",
        "usage.png",
        "loss.png",
    ]:
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["split"] == "test"] == [3, 6]
    assert {"loss", "lr", "usage", "perplexity"} <= set(rows[0])
    assert 0 < result.eval["psnr"] < 60
    assert not list(run.glob(".tmp-*"))
    # the resolved recipe rebuilds the same recipe
    assert Run.open(run).recipe().train == tiny(tmp_path).train
    # the saved tokenizer loads and reproduces itself
    tok = Tokenizer.load(run)
    assert tok.grid == (7, 7) and tok.quantizer.codebook_sizes == (1000,)


def test_no_pickle_in_run_folder(tmp_path):
    run = train(tiny(tmp_path), progress=False).run_dir
    for path in run.iterdir():
        assert path.suffix in {".toml", ".safetensors", ".json", ".jsonl", ".png"}, path


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny(tmp_path, name="a"), progress=False)
    stopped = train(tiny(tmp_path, name="b"), progress=False, stop_after=3)
    assert stopped.step == 3
    resumed = train(Run.open(stopped.run_dir).recipe(), resume=True, progress=False)
    assert resumed.step == 6
    a = load_file(straight.run_dir / "model.safetensors")
    b = load_file(resumed.run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_refuses_existing_run_folder(tmp_path):
    (tmp_path / "run").mkdir()
    keep = tmp_path / "run" / "precious.txt"
    keep.write_text("mine")
    with pytest.raises(OutputDirError, match="already exists"):
        train(tiny(tmp_path), progress=False)
    assert keep.read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["precious.txt"]


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="recipe.toml is missing"):
        Run.open(tmp_path)


def test_lr_schedule(tmp_path):
    recipe = tiny(
        tmp_path, "train.steps=100", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr=0.1"
    )
    assert lr_at(0, recipe) == pytest.approx(0.1)
    assert lr_at(9, recipe) == pytest.approx(1.0)
    assert lr_at(10, recipe) == pytest.approx(1.0)
    assert lr_at(55, recipe) == pytest.approx(0.55)
    assert lr_at(100, recipe) == pytest.approx(0.1)
    const = tiny(tmp_path, "train.schedule='constant'", "train.warmup_steps=0")
    assert lr_at(5, const) == const.train.lr


def test_collapse_warning_names_the_stream(tmp_path):
    # 32768 codes, 16 test images x 49 positions: a 6-step run uses about 40 % of the 784
    # codes those tokens could show at most (used / min(K, N)), below the threshold of 50 %
    recipe = tiny(
        tmp_path,
        "quantizer.levels=[8, 8, 8, 8, 8]",
        "model.latent_dim=5",
        "train.eval_samples=16",
        "train.collapse_threshold=0.5",
    )
    with pytest.warns(CollapseWarning, match=r"stream 0 .* of 32768 codes") as caught:
        train(recipe, progress=False)
    # it names the recipe and the run, and says how to look closer
    message = str(caught[0].message)
    assert f"recipe {recipe.name} " in message and str(recipe.run_dir) in message
    assert f"tok inspect {recipe.run_dir}" in message
    assert "on 16 test images" in message


def test_no_collapse_warning_above_the_threshold(tmp_path, recwarn):
    # 1000 codes and a threshold far below what 32 x 49 positions use
    train(tiny(tmp_path, "train.collapse_threshold=0.01"), progress=False)
    assert not [w for w in recwarn if issubclass(w.category, CollapseWarning)]


def test_metrics_log_per_stream_health(tmp_path):
    run = train(tiny(tmp_path, "quantizer.num_codebooks=2"), progress=False).run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(train_rows) == 6 and len(test_rows) == 2
    for row in train_rows:  # per-batch, per stream: 8 images x 49 positions
        assert [set(s) for s in row["streams"]] == [{"usage", "perplexity", "dead"}] * 2
        for s in row["streams"]:
            used = round(s["usage"] * 1000)
            assert 1 <= used <= 8 * 49 and s["dead"] == 1000 - used
            assert 1 <= s["perplexity"] <= used + 1e-6
        # the quantizer's batch usage is the mean over the streams
        assert row["usage"] == pytest.approx(sum(s["usage"] for s in row["streams"]) / 2)
    for row in test_rows:  # on the evaluation images, per stream
        assert len(row["streams"]) == 2
        for s in row["streams"]:
            assert s["size"] == 1000 and s["dead"] == 1000 - round(s["usage"] * 1000)
            assert s["perplexity_ratio"] == pytest.approx(
                math.log2(s["perplexity"]) / math.log2(1000)
            )
            assert s["perplexity_fraction"] == pytest.approx(s["perplexity"] / 1000)
        assert row["usage"] == pytest.approx(sum(s["usage"] for s in row["streams"]) / 2)


def test_a_newline_in_a_recipe_string_survives_resume(tmp_path):
    """recipe.toml is written by tomli-w: any string a recipe holds reads back the same."""
    root = tmp_path / 'data\nwith "quotes" and \\ backslash'
    root.mkdir()
    (root / "MNIST").symlink_to(Path(os.environ["TOK_DATA_DIR"]) / "MNIST")
    recipe = tiny(tmp_path, f"data.root={json.dumps(str(root))}")
    assert recipe.data.options["root"] == str(root)
    stopped = train(recipe, progress=False, stop_after=3)
    again = Run.open(stopped.run_dir).recipe()
    assert again.data.options["root"] == str(root)
    assert again.to_dict() == {**recipe.to_dict(), "output": again.to_dict()["output"]}
    assert train(again, resume=True, progress=False).step == 6


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("train.eval_every=0", "[train] eval_every: must be a number ≥ 1"),
        ("train.lr=nan", "[train] lr: must be a number in (0, 1e30]"),
        ("train.lr=1e38", "[train] lr: must be a number in (0, 1e30]"),
        ("train.weight_decay=2", "[train] weight_decay: must be a number in [0, 1]"),
        ("train.betas=[2, 3]", "[train] betas: must be two numbers in [0, 1)"),
        ("output.samples=0", "[output] samples: must be a number ≥ 1"),
        ("train.collapse_threshold=5", "[train] collapse_threshold: must be a fraction"),
    ],
)
def test_numbers_out_of_range_are_recipe_problems(tmp_path, setting, needle):
    from tok.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        tiny(tmp_path, setting)
    assert any(needle in p for p in info.value.problems), info.value.problems


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    """The architecture cannot take 28x28 (patch 2 and two halvings need multiples of 8): the error
    comes before training, and neither a rerun nor --resume would find a half-made run."""
    from tok.errors import ConfigError

    recipe = tiny(tmp_path, "model.channels=[8, 8, 8]", "model.blocks=1")
    with pytest.raises(ConfigError, match="not divisible by the downsampling factor 8"):
        train(recipe, progress=False)
    assert not (tmp_path / "run").exists()
    # one stopped by an error inside the loop, in an empty folder the user made: what the
    # attempt wrote goes, the user's folder stays
    from tok import hookimpl
    from tok.losses import Loss
    from tok.registry import register_plugin, unregister_plugin

    class Explodes(Loss):
        def forward(self, batch):
            if batch.step == 2:
                raise RuntimeError("boom at step 2")
            return LossOutput(loss=batch.reconstruction.sum() * 0)

    class Plugin:
        @hookimpl
        def register_losses(register):
            register(Explodes, name="explodes")

    from tok.losses import LossOutput

    register_plugin(Plugin, name="explodes-plugin")
    try:
        (tmp_path / "run").mkdir()
        recipe = tiny(tmp_path, "train.steps=6", "train.loss='explodes'")
        with pytest.raises(RuntimeError, match="boom at step 2"):
            train(recipe, progress=False)
    finally:
        unregister_plugin("explodes-plugin")
    assert (tmp_path / "run").is_dir() and not list((tmp_path / "run").iterdir())


# ---------------------------------------------------------------------------------------
# Robustness: a non-finite loss, and a resume that changes what cannot change.


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def test_nonfinite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    run = train(tiny(tmp_path), progress=False, stop_after=3).run_dir
    before = _files(run)
    diverging = Run.open(run).recipe(["train.lr=1e30"])
    with pytest.raises(TrainingError) as info:
        train(diverging, resume=True, progress=False)
    message = str(info.value)
    assert "training diverged at step" in message and "the loss is nan" in message.lower()
    assert "the checkpoint of step 3 is kept" in message
    assert f"tok train --resume {run}" in message
    after = _files(run)
    for name in ("state.safetensors", "state.json", "model.safetensors", "tokenizer.json"):
        assert after[name] == before[name], name  # the last finite checkpoint, untouched
    for name in ("model.safetensors", "state.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(run / name).values()), name
    # … and it resumes
    assert train(Run.open(run).recipe(), resume=True, progress=False).step == 6


def test_nonfinite_loss_before_the_first_checkpoint_leaves_nothing(tmp_path):
    with pytest.raises(TrainingError, match=r"at step 2: .*nothing was saved"):
        train(tiny(tmp_path, "train.lr=1e30", "train.warmup_steps=0"), progress=False)
    assert not (tmp_path / "run").exists()


def test_incompatible_resume_names_the_keys_and_leaves_the_run_untouched(tmp_path):
    run = train(tiny(tmp_path), progress=False, stop_after=3).run_dir
    before = _files(run)
    for change, needle in (
        ("model.channels=[8, 32]", "model.channels ([8, 32] here, [8, 16] in the run)"),
        ("model.latent_dim=8", "model.latent_dim (8 here, 4 in the run)"),
        ("quantizer.levels=[5, 5, 5]", "quantizer.levels ([5, 5, 5] here, [8, 5, 5, 5] in"),
        ("train.seed=1", "train.seed (1 here, 0 in the run)"),
    ):
        with pytest.raises(CheckpointError) as info:
            train(Run.open(run).recipe([change]), resume=True, progress=False)
        message = str(info.value)
        assert needle in message and "cannot change on resume" in message
        assert "train.steps" in message  # what may change
        assert _files(run) == before
    # what may change does
    result = train(
        Run.open(run).recipe(["train.steps=8", "train.lr=1e-3", "train.eval_every=4"]),
        resume=True,
        progress=False,
    )
    assert result.step == 8


def test_kmeans_init_batch_size_8_reaches_the_usage_of_batch_size_64():
    """vq_mnist without dead-code restart: k-means initialisation waits for 3 x 1,024
    vectors, and until then the encoder waits too (the quantizer passes its input on
    detached, with no commitment to random codes), so the 8 batches of 8 digits it gathers
    come from one encoder, as the first batch of 64 does. Test usage right after
    initialisation is then the same; it used to be k-means on the first 392 vectors."""
    from tok.train import build_parts

    def usage_right_after_init(batch: int) -> tuple[int, float]:
        recipe = load_recipe(
            ROOT / "recipes/vq_mnist.toml",
            [f"train.batch_size={batch}", "quantizer.restart_after=0", "train.eval_samples=1000"],
        )
        torch.manual_seed(0)
        parts = build_parts(recipe, torch.device("cpu"))
        tokenizer, steps, batches = parts.tokenizer.train(), 0, parts.batches(0)
        while not bool(tokenizer.quantizer.initted):
            out = tokenizer(next(batches).float() / 255)
            steps += 1
            if not bool(tokenizer.quantizer.initted):  # gathering: the encoder gets no gradient
                assert float(out.aux_loss) == 0.0
                out.reconstruction.mean().backward()
                assert all(p.grad is None for p in tokenizer.architecture.encoder.parameters())
                tokenizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            codes = tokenizer.eval().encode(parts.eval_set.floats(slice(0, 1000))).unique()
        return steps, codes.numel() / 1024

    small_steps, small = usage_right_after_init(8)
    large_steps, large = usage_right_after_init(64)
    assert (small_steps, large_steps) == (8, 1)  # 3,072 vectors: 8 x 392, or 1 x 3,136
    assert small > 0.9 and abs(small - large) < 0.02, (small, large)


class Poison(Loss):
    """A loss plugin that adds nothing to the loss, and after the optimizer step of
    ``at_step`` (0-based) writes an inf into the encoder: a finite loss, then non-finite
    weights, as an overflowing optimizer step leaves them."""

    def __init__(self, *, weight: float = 1.0, at_step: int = 3) -> None:
        super().__init__(weight=weight)
        self.at_step = at_step

    def forward(self, batch: LossInputs) -> LossOutput:
        return LossOutput(loss=batch.reconstruction.new_zeros(()))

    def update(self, batch: LossInputs) -> dict[str, float]:
        if batch.step == self.at_step:
            with torch.no_grad():
                weight = next(batch.tokenizer.architecture.parameters())
                weight[(0,) * weight.dim()] = float("inf")  # channels-last: no .view
        return {}


class PoisonPlugin:
    @hookimpl
    def register_losses(register):
        register(Poison, name="poison")


def test_nonfinite_weights_after_a_step_are_neither_shown_nor_saved(tmp_path):
    """The evaluation after such a step drew black reconstructions and logged psnr NaN;
    now training stops before it, and the pictures and checkpoint of step 3 stay."""
    register_plugin(PoisonPlugin, name="poison-plugin")
    try:
        recipe = tiny(tmp_path, "train.eval_every=1", "losses.poison={at_step = 3}")
        with pytest.raises(TrainingError, match="at step 4: its optimizer step left non-finite"):
            train(recipe, progress=False)
    finally:
        unregister_plugin("poison-plugin")
    run = recipe.run_dir
    assert json.loads((run / "state.json").read_text())["step"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "test"] == [1, 2, 3]
    assert all(math.isfinite(r["psnr"]) for r in rows if r["split"] == "test")
    assert all(torch.isfinite(t).all() for t in load_file(run / "model.safetensors").values())


def test_nonfinite_values_in_a_checkpoint_are_refused_on_resume(tmp_path):
    from safetensors.torch import save_file

    run = train(tiny(tmp_path), progress=False, stop_after=3).run_dir
    state = load_file(run / "state.safetensors")
    from safetensors import safe_open

    with safe_open(str(run / "state.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in state if k.startswith("model.architecture"))
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(run / "state.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=f"damaged, with non-finite values in {key}"):
        train(Run.open(run).recipe(["train.steps=8"]), resume=True, progress=False)


def test_incompatible_resume_of_a_hand_edited_recipe_names_the_key(tmp_path):
    """Editing recipe.toml itself gets past the comparison of the recipe with itself; the
    weights' own record of their config catches it."""
    run = train(tiny(tmp_path), progress=False, stop_after=3).run_dir
    import tomllib

    import tomli_w

    data = tomllib.loads((run / "recipe.toml").read_text())
    assert data["quantizer"]["levels"] == [8, 5, 5, 5]
    data["quantizer"]["levels"] = [8, 5, 5, 4]
    (run / "recipe.toml").write_text(tomli_w.dumps(data))
    with pytest.raises(CheckpointError) as info:
        train(Run.open(run).recipe(), resume=True, progress=False)
    assert "quantizer.config.levels is [8, 5, 5, 4] in recipe.toml but [8, 5, 5, 5]" in str(
        info.value
    )
