"""Third-party plugins installed for real (tok.registry through the CLI).

The example distribution in ``examples/tok-plugin-example`` is built and
installed with pip into a temporary folder (``--target``; the venv is not
touched) and ``tok`` runs as a subprocess with that folder on ``PYTHONPATH``,
so ``importlib.metadata`` finds its dist-info and entry point exactly as it
would after ``pip install tok-plugin-example``. A second, broken distribution
(its module raises at import) is then installed next to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from tok.recipe import dumps_toml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tok-plugin-example"
DATA_DIR = os.environ.get("TOK_DATA_DIR") or str(ROOT.parent / "shared" / "data")
TINY_TRAIN = {
    "steps": 3,
    "batch_size": 8,
    "eval_samples": 16,
    "eval_every": 3,
    "checkpoint_every": 3,
    "warmup_steps": 1,
    "device": "cpu",
    "threads": 1,
}


def pip_install(source: Path, target: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-input",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"pip install {source.name} failed:\n{result.stdout}\n{result.stderr}"
    )


def run_tok(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m tok ARGS`` with ``site`` on PYTHONPATH and no plugin env vars from outside."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TOK_PLUGINS", "TOK_STRICT_PLUGINS", "TOK_TRACE_HOOKS")
    }
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p
    )
    environ.update(OMP_NUM_THREADS="1", TOK_DATA_DIR=DATA_DIR, **env)
    return subprocess.run(
        [sys.executable, "-m", "tok", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=site.parent,
        timeout=300,
    )


def plugins_json(site: Path, **env: str) -> dict[str, dict]:
    result = run_tok(site, "plugins", "--json", **env)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tok: warning:")]


def write_recipe(path: Path, quantizer: dict, run_dir: Path) -> Path:
    """recipes/fsq_mnist.toml's data and model, another quantizer, tiny training."""
    base = tomllib.loads((ROOT / "recipes" / "fsq_mnist.toml").read_text())
    recipe = {
        "data": base["data"],
        "model": base["model"],
        "quantizer": quantizer,
        "train": TINY_TRAIN,
        "output": {"dir": str(run_dir), "samples": 8},
    }
    path.write_text(dumps_toml(recipe, header=f"# tok train {path}"))
    return path


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("external-plugins")


@pytest.fixture(scope="module")
def example_src(tmp) -> Path:
    """A copy of the example, so that building it leaves nothing in the repository."""
    src = tmp / "src" / "tok-plugin-example"
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    return src


@pytest.fixture(scope="module")
def site(tmp, example_src) -> Path:
    """A folder with tok-plugin-example installed (dist-info + module)."""
    target = tmp / "site"
    pip_install(example_src, target)
    assert (target / "tok_plugin_example-0.1.0.dist-info").is_dir()
    return target


@pytest.fixture(scope="module")
def broken_site(tmp, site) -> Path:
    """``site`` plus tok-plugin-broken, whose module raises at import.

    Installed into a copy of ``site`` so that the tests of the healthy
    example do not depend on running before these.
    """
    src = tmp / "src" / "tok-plugin-broken"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=64"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "tok-plugin-broken"
            version = "0.2.0"
            dependencies = ["tok"]

            [project.entry-points.tok]
            broken = "tok_plugin_broken"

            [tool.setuptools]
            py-modules = ["tok_plugin_broken"]
            """
        )
    )
    (src / "tok_plugin_broken.py").write_text('raise RuntimeError("boom")\n')
    target = tmp / "site-broken"
    shutil.copytree(site, target)
    pip_install(src, target)
    assert (target / "tok_plugin_broken-0.2.0.dist-info").is_dir()
    assert (target / "tok_plugin_example-0.1.0.dist-info").is_dir()
    return target


# the example plugin -------------------------------------------------------------


def test_example_is_listed_by_tok_plugins(site):
    result = run_tok(site, "plugins")
    assert result.returncode == 0, result.stderr
    assert warning_lines(result.stderr) == []
    row = next(line for line in result.stdout.splitlines() if line.startswith("example "))
    assert "tok-plugin-example" in row and "entry point" in row and "example-binary" in row

    infos = plugins_json(site)
    assert infos["example"] == {
        "name": "example",
        "version": "0.1.0",
        "distribution": "tok-plugin-example",
        "source": "entry point",
        "status": "ok",
        "error": None,
        "provides": {"quantizers": ["example-binary"]},
    }
    assert infos["fsq"]["source"] == "builtin"


def test_example_quantizer_is_listed(site):
    result = run_tok(site, "quantizers")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert {"fsq", "example-binary"} <= set(names)

    result = run_tok(site, "quantizers", "example-*", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["name"] == "example-binary"
    assert entry["aliases"] == ["example-sign"]
    assert entry["plugin"] == "example"
    assert entry["example_codebook_sizes"] == [4, 4, 4]


def test_example_own_tests_pass(site, example_src):
    """The plugin's tests (check_quantizer by name) pass against the installed plugin."""
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(site))
    environ.pop("TOK_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        env=environ,
        cwd=example_src,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


def test_recipe_trains_with_the_example_quantizer(site, tmp):
    run_dir = tmp / "run-example"
    recipe = write_recipe(
        tmp / "example_mnist.toml",
        {"name": "example-binary", "bits": 2, "commitment": 0.1},
        run_dir,
    )
    result = run_tok(site, "train", str(recipe), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "model.safetensors").is_file()
    tokenizer = json.loads((run_dir / "tokenizer.json").read_text())
    assert tokenizer["quantizer"]["name"] == "example-binary"
    assert tokenizer["quantizer"]["config"] == {"dim": 4, "bits": 2, "commitment": 0.1}
    assert tokenizer["codebook_sizes"] == [4, 4]


def test_a_run_whose_plugin_was_uninstalled_names_the_distribution(site, tmp):
    """Train and encode with the example plugin, then run tok without it: every command
    that needs the run says which distribution (and version) to install, in one line."""
    run_dir = tmp / "run-gone"
    recipe = write_recipe(tmp / "gone.toml", {"name": "example-binary", "bits": 2}, run_dir)
    assert run_tok(site, "train", str(recipe), "--no-progress").returncode == 0
    tokens = tmp / "tokens-gone"
    result = run_tok(
        site, "encode", "mnist:test", "--tokenizer", str(run_dir), "--out", str(tokens),
        "--limit", "10", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header = json.loads((tokens / "manifest.json").read_text())["header"]
    assert header["plugins"]["quantizer"]["distribution"] == "tok-plugin-example"

    without = tmp / "site-without-the-plugin"  # the plugin is uninstalled
    without.mkdir(exist_ok=True)
    want = (
        "quantizer 'example-binary' comes from tok-plugin-example 0.1.0, which is not "
        "installed; pip install 'tok-plugin-example==0.1.0' brings it back"
    )
    for args in (
        ["decode", str(tokens), "--out", str(tmp / "decoded-gone")],
        ["eval", str(run_dir), "--samples", "8"],
        ["train", "--resume", str(run_dir)],
    ):
        result = run_tok(without, *args)
        assert result.returncode == 1, (args, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("tok: error: ") and want in line, line
        assert "damaged" not in line and "recipe problem" not in line
    assert not (tmp / "decoded-gone").exists()


# a broken plugin next to it ------------------------------------------------------------


def test_broken_plugin_gives_one_warning(broken_site):
    result = run_tok(broken_site, "plugins")
    assert result.returncode == 0, result.stderr
    (line,) = warning_lines(result.stderr)
    assert "'broken'" in line
    assert "tok-plugin-broken 0.2.0" in line
    assert "boom" in line
    assert "tok-plugin-example" not in result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("broken "))
    assert "failed (see below)" in row and "boom" not in row
    # the error goes below the table, so the table stays as narrow as its columns
    lines = result.stdout.splitlines()
    assert "broken: RuntimeError: boom" in lines
    rule = lines[1]  # the dashes under the header, one run per column
    assert rule.split("  ")[4] == "-" * len("failed (see below)")  # STATUS holds no error
    assert max(len(line) for line in lines) <= len(rule)


def test_broken_plugin_is_listed_as_failed(broken_site):
    infos = plugins_json(broken_site)
    broken = infos["broken"]
    assert broken["status"] == "failed"
    assert broken["error"] == "RuntimeError: boom"
    assert (broken["distribution"], broken["version"], broken["source"]) == (
        "tok-plugin-broken",
        "0.2.0",
        "entry point",
    )
    assert broken["provides"] == {}
    for name in ("example", "fsq", "conv", "datasets"):
        assert infos[name]["status"] == "ok", name


def test_other_plugins_keep_working_next_to_a_broken_one(broken_site):
    result = run_tok(broken_site, "quantizers")
    assert result.returncode == 0, result.stderr
    assert len(warning_lines(result.stderr)) == 1
    names = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert {"fsq", "example-binary"} <= set(names)


def test_training_works_next_to_a_broken_plugin(broken_site, tmp):
    run_dir = tmp / "run-fsq"
    recipe = write_recipe(tmp / "fsq_mnist.toml", {"name": "fsq", "levels": [8, 5, 5, 5]}, run_dir)
    result = run_tok(broken_site, "train", str(recipe), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "model.safetensors").is_file()
    assert sum("'broken'" in line for line in warning_lines(result.stderr)) == 1


def test_strict_plugins_makes_a_broken_plugin_an_error(broken_site):
    result = run_tok(broken_site, "plugins", TOK_STRICT_PLUGINS="1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "tok: error: plugin 'broken' (tok-plugin-broken 0.2.0) failed to load: RuntimeError: boom"
    )


def test_allow_list_leaves_the_broken_plugin_out(broken_site):
    result = run_tok(broken_site, "plugins", "--json", TOK_PLUGINS="fsq,conv,datasets,example")
    assert result.returncode == 0, result.stderr
    assert warning_lines(result.stderr) == []
    names = {p["name"] for p in json.loads(result.stdout)}
    assert names == {"fsq", "conv", "datasets", "example"}
