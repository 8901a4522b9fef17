"""Tests for tok.recipe: TOML → dataclasses, every error at once, overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tok.errors import RecipeError
from tok.recipe import TrainConfig, apply_overrides, dumps_toml, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))

BASE = {
    "data": {"name": "mnist"},
    "model": {"name": "conv", "channels": [8, 16], "latent_dim": 4},
    "quantizer": {"name": "fsq", "levels": [8, 5, 5, 5]},
}


def test_there_are_recipes():
    assert any(p.name == "fsq_mnist.toml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_parses_and_starts_with_its_command(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    first = path.read_text().splitlines()[0]
    assert first == f"# tok train {path.relative_to(ROOT).as_posix()}"


def test_defaults_fill_train_and_output():
    recipe = parse_recipe(BASE)
    assert recipe.train == TrainConfig()
    assert recipe.run_dir == Path("runs/run")


def test_all_problems_reported_together():
    data = {
        **BASE,
        "train": {"stepz": 3, "lr": "fast"},
        "quantizer": {"name": "fsq", "levels": [8, 5], "bogus": 1},
        "extra": {},
    }
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, source="r.toml")
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 4
    assert "unknown key 'stepz'" in text and "valid keys: steps" in text
    assert "[train] lr: expected float, got str 'fast'" in text
    assert "unknown key 'bogus'" in text
    assert "unknown table [extra]" in text
    assert "r.toml" in text


def test_unknown_component_name_suggests_closest():
    with pytest.raises(RecipeError, match=r"did you mean .*'fsq'"):
        parse_recipe({**BASE, "quantizer": {"name": "fqs"}})


def test_missing_table_and_name():
    with pytest.raises(RecipeError) as info:
        parse_recipe({"data": {"name": "mnist"}, "model": {"channels": [8]}})
    text = str(info.value)
    assert "missing table [quantizer]" in text
    assert "[model]: missing name" in text


def test_wrong_type_in_component_option():
    with pytest.raises(RecipeError, match=r"levels: expected .*list of int.*got str"):
        parse_recipe({**BASE, "quantizer": {"name": "fsq", "levels": "8,5,5,5"}})


def test_bool_is_not_an_int():
    with pytest.raises(RecipeError, match="steps: expected int, got bool"):
        parse_recipe({**BASE, "train": {"steps": True}})


def test_overrides_parse_toml_values():
    data = apply_overrides(
        BASE,
        ["train.steps=200", "quantizer.levels=[8, 8]", "output.dir=runs/x", "train.lr=1e-3"],
    )
    recipe = parse_recipe(data)
    assert recipe.train.steps == 200
    assert recipe.train.lr == 1e-3
    assert recipe.quantizer.options["levels"] == [8, 8]
    assert recipe.output.dir == "runs/x"
    assert BASE["quantizer"]["levels"] == [8, 5, 5, 5]  # the input is not modified


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="expected table.key=value"):
        apply_overrides(BASE, ["steps=3"])


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nname=")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_resolved_recipe_round_trips_through_toml():
    recipe = parse_recipe({**BASE, "train": {"steps": 7, "betas": [0.8, 0.9]}}, name="x")
    text = dumps_toml(recipe.to_dict(), header="# hello")
    again = parse_recipe(tomllib.loads(text), name="x")
    assert again == recipe
    assert text.startswith("# hello\n")


def test_set_reaches_into_nested_tables_and_names_a_path_through_a_value():
    from tok.recipe import apply_overrides

    data = {"losses": {"adversarial": {"weight": 0.1}}, "train": {"steps": 3}}
    out = apply_overrides(data, ["losses.adversarial.start_step=500", "losses.perceptual.weight=1"])
    assert out["losses"] == {
        "adversarial": {"weight": 0.1, "start_step": 500},
        "perceptual": {"weight": 1},
    }
    assert data["losses"] == {"adversarial": {"weight": 0.1}}  # the input is left alone
    with pytest.raises(RecipeError, match=r"\[train.steps\] is not a table"):
        apply_overrides(data, ["train.steps.x=1"])
