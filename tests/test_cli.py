"""The ``tok`` command: help, version, listings, recipe errors, ``--debug``, eval, train refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import one_error, snapshot, tok_cli, tok_subprocess

import tok
from tok import cli
from tok.errors import RecipeError, TokError

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "fsq_mnist.toml"

SUBCOMMAND_OPTIONS = {
    "train": ["--set", "--resume", "--no-progress", "recipe"],
    "encode": [
        "--out",
        "--tokenizer",
        "--run",
        "--limit",
        "--device",
        "--split",
        "--shard-size",
        "--batch-size",
        "--resize",
        "--fps",
        "--no-progress",
    ],
    "decode": [
        "--out",
        "--tokenizer",
        "--run",
        "--device",
        "--force",
        "--batch-size",
        "--video-format",
        "--fps",
        "--no-progress",
    ],
    "shards": ["--out", "--per-shard", "--no-progress", "src"],
    "eval": [
        "--split",
        "--samples",
        "--device",
        "--fast",
        "--features",
        "--lpips-net",
        "--lpips-weights",
        "--inception-weights",
        "--json",
    ],
    "inspect": ["--split", "--samples", "--threshold", "--out", "--device", "--json"],
    "interpolate": ["--from", "--to", "--steps", "--out", "--device", "run"],
    "latent-map": ["--out", "--split", "--samples", "--grid", "--device", "run"],
    "plugins": ["--json"],
    "quantizers": ["pattern", "--json"],
    "recipes": ["pattern", "--json"],
}


def write_recipe(path: Path, *, quantizer: str = "fsq", train_extra: str = "") -> Path:
    """The real fsq_mnist recipe with another quantizer name and extra [train] lines."""
    text = RECIPE.read_text().replace('name = "fsq"', f'name = "{quantizer}"')
    assert f'name = "{quantizer}"' in text
    text = text.replace("[train]\n", "[train]\n" + train_extra)
    path.write_text(text)
    return path


# version and help -------------------------------------------------------------


def test_version(capsys):
    code, out, _ = tok_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"tok {tok.__version__}"
    proc = tok_subprocess("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"tok {tok.__version__}"


def test_help_lists_every_command(capsys):
    code, out, _ = tok_cli(capsys, "--help")
    assert code == 0
    for word in [*SUBCOMMAND_OPTIONS, "--version", "--debug"]:
        assert word in out


def test_no_command_prints_help(capsys):
    code, out, _ = tok_cli(capsys)
    assert code == 0
    assert "usage: tok" in out and "encode" in out


@pytest.mark.parametrize("command", sorted(SUBCOMMAND_OPTIONS))
def test_subcommand_help_mentions_its_options(capsys, command):
    code, out, _ = tok_cli(capsys, command, "--help")
    assert code == 0
    assert f"usage: tok {command}" in out
    for option in SUBCOMMAND_OPTIONS[command]:
        assert option in out, f"{option} missing from `tok {command} --help`"


# listings ---------------------------------------------------------------------

BUILTINS = {"fsq": "quantizers", "conv": "architectures", "datasets": "datasets"}


def test_plugins_table(capsys):
    code, out, _ = tok_cli(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "VERSION"] and "SOURCE" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:] if line.strip()}
    for name, kind in BUILTINS.items():
        assert name in rows, f"no {name} row in:\n{out}"
        assert "builtin" in rows[name].split()
        assert "ok" in rows[name].split()
        assert kind in rows[name]
    assert "quantizers: fsq" in rows["fsq"]
    assert "mnist" in rows["datasets"] and "imagefolder" in rows["datasets"]


def test_plugins_json(capsys):
    code, out, _ = tok_cli(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert isinstance(data, list)
    for item in data:
        assert {"name", "version", "source", "status", "provides"} <= set(item)
    by_name = {item["name"]: item for item in data}
    for name, kind in BUILTINS.items():
        item = by_name[name]
        assert item["source"] == "builtin"
        assert item["status"] == "ok"
        assert item["version"] == tok.__version__
        assert kind in item["provides"]
    assert by_name["fsq"]["provides"]["quantizers"] == ["fsq"]
    provided = set(by_name["datasets"]["provides"]["datasets"])
    assert {"imagefolder", "imageshards", "mnist", "videofolder", "videoshards"} <= provided


def test_quantizers_lists_fsq(capsys):
    code, out, _ = tok_cli(capsys, "quantizers")
    assert code == 0
    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert "fsq" in rows
    fsq_row = next(line for line in out.splitlines() if line.startswith("fsq "))
    assert "1000" in fsq_row  # the example codebook size (levels 8,5,5,5)

    code, out, _ = tok_cli(capsys, "quantizers", "fs*", "--json")
    assert code == 0
    assert [d["name"] for d in json.loads(out)] == ["fsq"]


def test_quantizers_pattern_that_matches_nothing(capsys):
    for args in (["zz*"], ["zz*", "--json"]):
        code, out, err = tok_cli(capsys, "quantizers", *args)
        assert code == 1 and out == ""
        one_error(err, "no quantizer matches 'zz*'", "fsq", "vq")


def test_quantizers_json_gives_codebook_sizes_as_numbers(capsys):
    code, out, _ = tok_cli(capsys, "quantizers", "--json")
    assert code == 0
    sizes = {d["name"]: d["example_codebook_sizes"] for d in json.loads(out)}
    assert sizes["fsq"] == [1000] and all(isinstance(k, int) for k in sizes["mgvq"])


# recipe errors ----------------------------------------------------------------


def test_unknown_quantizer_suggests_the_closest(capsys, tmp_path):
    recipe = write_recipe(tmp_path / "typo.toml", quantizer="fqs")
    out_dir = tmp_path / "run"
    code, _, err = tok_cli(capsys, "train", recipe, "--set", f"output.dir='{out_dir}'")
    assert code != 0
    one_error(err, "fqs", "did you mean", "'fsq'", str(recipe))
    assert not out_dir.exists()


def test_unknown_key_and_wrong_type_are_reported_together(capsys, tmp_path):
    recipe = write_recipe(tmp_path / "bad.toml", train_extra='stepz = 10\nweight_decay = "fast"\n')
    out_dir = tmp_path / "run"
    code, _, err = tok_cli(capsys, "train", recipe, "--set", f"output.dir='{out_dir}'")
    assert code != 0
    line = one_error(err, "stepz", "unknown key", "weight_decay", "expected float", "'fast'")
    assert "2 recipe problems" in line
    assert not out_dir.exists()


def test_invalid_levels_are_one_line_and_create_nothing(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = tok_cli(
        capsys,
        "train",
        RECIPE,
        "--set",
        "quantizer.levels=[1, 5]",
        "--set",
        f"output.dir='{out_dir}'",
    )
    assert code != 0
    one_error(err, "invalid FSQ levels [1, 5]", "at least 2")
    assert not out_dir.exists()


def test_missing_dataset_offline_names_where_to_put_it(capsys, tmp_path):
    empty, out_dir = tmp_path / "nodata", tmp_path / "run"
    empty.mkdir()
    code, _, err = tok_cli(
        capsys,
        "train",
        RECIPE,
        "--set",
        f"data.root='{empty}'",
        "--set",
        "data.download=false",
        "--set",
        f"output.dir='{out_dir}'",
    )
    assert code != 0
    one_error(err, "MNIST is not in", str(empty / "MNIST" / "raw"), "train-images-idx3-ubyte")
    assert not out_dir.exists()
    assert list(empty.iterdir()) == []


def test_set_overrides_are_checked_too(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = tok_cli(
        capsys,
        "train",
        RECIPE,
        "--set",
        "train.steps=many",
        "--set",
        "quantizer.levelz=[8,5]",
        "--set",
        f"output.dir='{out_dir}'",
    )
    assert code != 0
    one_error(err, "steps", "'many'", "levelz")
    assert not out_dir.exists()


def test_debug_shows_the_traceback(capsys, tmp_path):
    recipe = write_recipe(tmp_path / "typo.toml", quantizer="fqs")
    # in process: --debug lets the TokError through instead of printing one line
    with pytest.raises(RecipeError, match="did you mean"):
        cli.main(["--debug", "train", str(recipe)])
    with pytest.raises(RecipeError, match="did you mean"):  # after the command works too
        cli.main(["train", str(recipe), "--debug"])
    # as a command: a Python traceback on stderr, non-zero exit
    proc = tok_subprocess("--debug", "train", recipe)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RecipeError" in proc.stderr and "did you mean" in proc.stderr
    # and without --debug: one line, no traceback
    proc = tok_subprocess("train", recipe)
    assert proc.returncode != 0
    one_error(proc.stderr, "did you mean")


def test_errors_are_tokerrors_with_nonzero_exit(capsys, tmp_path):
    code, _, err = tok_cli(capsys, "train")
    assert code != 0
    one_error(err, "recipe")
    code, _, err = tok_cli(capsys, "train", tmp_path / "nope.toml")
    assert code != 0
    one_error(err, "nope.toml")
    assert issubclass(RecipeError, TokError)


# eval -------------------------------------------------------------------------


@pytest.fixture
def no_lpips_or_inception(tmp_path, monkeypatch):
    """An empty torch hub: LPIPS and rFID are unavailable, whatever this machine holds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TOK_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("TOK_INCEPTION_WEIGHTS", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_eval_prints_the_metrics(capsys, trained_run, no_lpips_or_inception):
    code, out, err = tok_cli(capsys, "eval", trained_run, "--samples", "200")
    assert code == 0, err
    assert "200 test images" in out
    for word in ("psnr", "bits per pixel", "codebook usage", "perplexity"):
        assert word in out

    code, out_json, err = tok_cli(capsys, "eval", trained_run, "--samples", "200", "--json")
    assert code == 0, err
    data = json.loads(out_json)
    assert data["images"] == 200
    assert 5 < data["psnr"] < 60
    assert 0 < data["usage"] <= 1
    assert 1 <= data["perplexity"] <= 1000
    assert data["bits_per_pixel"] == pytest.approx(49 * math.log2(1000) / 784)
    assert len(data["streams"]) == 1 and data["streams"][0]["size"] == 1000
    # the table shows the same numbers
    assert f"{data['psnr']:.2f} dB" in out
    assert f"{data['bits_per_pixel']:.3f}" in out
    assert f"{data['perplexity']:.1f}" in out
    # and a per-stream health table
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STREAM"))
    assert lines[header].split() == [
        "STREAM", "CODES", "USAGE", "PERPLEXITY", "PPL/K", "LOG2-RATIO", "DEAD",
    ]  # fmt: skip
    s = data["streams"][0]
    assert lines[header + 2].split() == [
        "0",
        "1000",
        f"{s['usage']:.1%}",
        f"{s['perplexity']:.1f}",
        f"{s['perplexity_fraction']:.3f}",
        f"{s['perplexity_ratio']:.3f}",
        str(s["dead"]),
    ]
    assert s["perplexity_ratio"] == pytest.approx(math.log2(s["perplexity"]) / math.log2(1000))
    # the image-quality metrics, their spreads, and one line for each that cannot be had
    assert f"{data['psnr_std']:.4g} std over items" in out
    for name in ("ssim", "ms_ssim", "feature_distance_lite2", "fd_effnet_lite2"):
        assert f"  {name:<15} {data[name]:.4f}" in out
    assert 0 < data["ssim"] < 1 and data["ssim_std"] > 0 and 0 < data["ms_ssim"] < 1
    assert data["feature_distance_lite2"] > 0 and data["fd_effnet_lite2"] > 0
    assert "2 scales" in out  # 28 px: the most MS-SSIM scales torchmetrics accepts
    assert set(data["unavailable"]) == {"lpips", "rfid"}
    for name in ("lpips", "rfid"):
        assert f"  {name}: unavailable ({data['unavailable'][name]})" in out
    assert str(no_lpips_or_inception) in data["unavailable"]["lpips"]
    protocol = data["protocol"]
    assert protocol["split"] == "test" and protocol["items"] == 200
    assert protocol["shape"] == [1, 28, 28] and protocol["data"]["name"] == "mnist"
    assert protocol["ms_ssim_scales"] == 2
    assert protocol["perceptual_input"] == "grayscale repeated to RGB"
    assert "EfficientNet-Lite2" in protocol["networks"]["fd_effnet_lite2"]


def test_eval_fast_measures_only_psnr_and_the_codebook(capsys, trained_run):
    code, out, err = tok_cli(capsys, "eval", trained_run, "--samples", "50", "--fast", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert "ssim" not in data and "unavailable" not in data and data["psnr_std"] > 0
    assert data["protocol"]["items"] == 50 and "networks" not in data["protocol"]


def test_eval_of_a_continuous_run_adds_the_quality_metrics(
    capsys, trained_vae, no_lpips_or_inception
):
    code, out, err = tok_cli(capsys, "eval", trained_vae, "--samples", "50", "--features", "lite1")
    assert code == 0, err
    for needle in (
        "KL",
        "psnr",
        "ssim",
        "feature_distance_lite1",
        "fd_effnet_lite1",
        "lpips: unavailable",
    ):
        assert needle in out


def test_eval_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, _, err = tok_cli(capsys, "eval", tmp_path)
    assert code != 0
    one_error(err, str(tmp_path), "recipe.toml")


# train refusals ---------------------------------------------------------------


def test_train_refuses_an_existing_non_empty_output_folder(capsys, tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine\n")
    (out_dir / "model.safetensors").write_bytes(b"not yours")
    before = snapshot(out_dir)
    code, _, err = tok_cli(
        capsys, "train", RECIPE, "--set", f"output.dir='{out_dir}'", "--no-progress"
    )
    assert code != 0
    one_error(err, str(out_dir), "--resume")
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("what", ["empty", "other files", "missing"])
def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path, what):
    folder = tmp_path / "notarun"
    if what != "missing":
        folder.mkdir()
    if what == "other files":
        (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder) if folder.exists() else None
    code, _, err = tok_cli(capsys, "train", "--resume", folder, "--no-progress")
    assert code != 0
    one_error(err, str(folder), "not a run folder")
    if before is not None:
        assert snapshot(folder) == before
    else:
        assert not folder.exists()


def test_recipe_and_resume_together_is_an_error(capsys, tmp_path):
    code, _, err = tok_cli(capsys, "train", RECIPE, "--resume", tmp_path)
    assert code != 0
    one_error(err, "--resume")


def test_eval_rejects_negative_samples(capsys, trained_run):
    code, out, err = tok_cli(capsys, "eval", trained_run, "--samples", "-5")
    assert code != 0 and out == ""
    one_error(err, "--samples", "-5")


# torchrun, devices, shipped recipes ------------------------------------------------------


def test_no_tok_option_is_an_abbreviation_of_a_torchrun_option():
    """torchrun parses the options it knows (abbreviations too) before the module's own:
    `--run` could match its --run-path. Every tok option but that documented alias, and
    `tok train --nproc`, which starts torchrun and has no use under it, must pass through
    torchrun untouched."""
    from torch.distributed.run import get_args_parser

    torchrun = {o for a in get_args_parser()._actions for o in a.option_strings}
    parser = cli.build_parser()
    clashes = []
    for name, sub in parser.commands.items():
        for action in sub._actions:
            for option in action.option_strings:
                if option in ("--run", "--nproc", "-h", "--help"):
                    continue
                if any(t.startswith(option) for t in torchrun if t.startswith("--")):
                    clashes.append(f"tok {name} {option}")
    assert not clashes, clashes


def test_device_options_are_checked_in_one_line(capsys, trained_run, tmp_path):
    for args in (
        ["eval", trained_run, "--device", "tpu"],
        ["inspect", trained_run, "--device", "cuda:7", "--out", tmp_path / "h"],
        [
            "encode",
            "mnist:test",
            "--tokenizer",
            trained_run,
            "--out",
            tmp_path / "t",
            "--device",
            "nope",
        ],
    ):
        code, _, err = tok_cli(capsys, *args)
        assert code == 1
        one_error(err, "--device")
    assert not (tmp_path / "h").exists() and not (tmp_path / "t").exists()


def test_recipes_lists_the_shipped_recipes_with_their_purpose(capsys):
    code, out, _ = tok_cli(capsys, "recipes")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    shipped = sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))
    assert sorted(r for r in rows if not r.startswith("run")) == shipped
    for name in shipped:
        purpose = (REPO / "recipes" / f"{name}.toml").read_text().splitlines()[1].lstrip("# ")
        assert purpose in rows[name]
    code, out, _ = tok_cli(capsys, "recipes", "seq1d*", "--json")
    assert [r["name"] for r in json.loads(out)] == [
        "seq1d_mnist",
        "seq1d_mnist_k16",
        "seq1d_mnist_k64",
    ]
    code, _, err = tok_cli(capsys, "recipes", "zz*")
    assert code == 1
    one_error(err, "zz*", "fsq_mnist")


def test_train_takes_a_shipped_recipe_by_name(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = tok_cli(
        capsys, "train", "fsq_mnist", "--no-progress", "--set", f"output.dir='{out_dir}'",
        *("--set", "train.steps=2", "--set", "train.eval_samples=8", "--set", "train.batch_size=4"),
        *("--set", "model.channels=[8, 8]", "--set", "train.collapse_threshold=0.0"),
    )  # fmt: skip
    assert code == 0, err
    assert (out_dir / "model.safetensors").is_file()
    from tok.run import Run

    assert Run.open(out_dir).recipe().quantizer.options["levels"] == [8, 5, 5, 5]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "runs/x", "--no-progress"], "unrecognized arguments: --no-progress"),
        (["encode"], "required: src, --out"),
        (["inspect", "runs/x", "--samples", "many"], "invalid int value: 'many'"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_usage_errors_are_one_line_naming_the_commands_help(capsys, args, needle):
    code, out, err = tok_cli(capsys, *args)
    assert code == 2 and out == ""
    line = one_error(err, needle)
    command = args[0] if args[0] != "nosuchcommand" else None
    assert f"`tok {command} --help`" in line if command else "`tok --help`" in line


# robustness: the reported cases, tried from the command line ------------------------


def test_nonfinite_loss_is_one_error_line_and_nothing_is_kept(tmp_path):
    """``tok train recipes/vq_mnist.toml --set train.lr=1e30``: it used to go on training on
    a NaN loss, print ``test psnr nan dB``, exit 0 and save NaN weights."""
    out = tmp_path / "run"
    proc = tok_subprocess(
        "train", "vq_mnist", "--no-progress", "--set", "train.lr=1e30",
        "--set", "train.warmup_steps=0", "--set", "train.batch_size=8",
        "--set", f"output.dir='{out}'",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    one_error(proc.stderr, "training diverged at step", "nothing was saved", "train.lr")
    assert not out.exists()


def test_incompatible_resume_is_one_error_line(tmp_path, trained_run):
    """``tok train --resume RUN --set model.channels=[8,16,32]`` printed 20–40 lines of
    state-dict size mismatches."""
    before = snapshot(trained_run)
    for change, key in (
        ("model.channels=[8,32]", "model.channels"),
        ("model.latent_dim=8", "model.latent_dim"),
    ):
        proc = tok_subprocess("train", "--resume", trained_run, "--set", change)
        assert proc.returncode == 1, proc.stderr
        one_error(proc.stderr, f"cannot resume {trained_run}: {key} (", "cannot change on resume")
    assert snapshot(trained_run) == before


def test_a_bad_set_on_resume_names_the_set_values_and_output_dir_cannot_move(
    tmp_path, trained_run, capsys
):
    before = snapshot(trained_run)
    code, _, err = tok_cli(capsys, "train", "--resume", trained_run, "--set", "train.steps=-5")
    assert code == 1
    one_error(err, "recipe.toml with --set train.steps=-5", "steps: must be a number ≥ 1")
    code, _, err = tok_cli(
        capsys, "train", "--resume", trained_run, "--set", f"output.dir='{tmp_path / 'x'}'"
    )
    assert code == 1
    one_error(err, "--set output.dir cannot move a resumed run", str(trained_run))
    assert snapshot(trained_run) == before
