"""Huge codebooks: a 2^40-code LFQ run through the real ``tok`` commands in bounded memory.

The README offers LFQ up to 62 bits and FSQ ``[16] * 14``. One counter per code of
2^40 codes is 8 TB: any command that counted densely (``torch.zeros(K)``,
``bincount(minlength=K)``) would fail to allocate it, so these commands succeeding
is itself the proof that nothing allocates per code. On top of that, ``tok train``,
``tok eval`` and ``tok inspect`` run in one fresh process (``tok.cli.main``, the
console script's function, once per command) whose peak resident memory (``VmHWM``)
is taken after each command and must stay under 4 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, mnist_dir, one_error, tok_cli

K = 1 << 40
RECIPE = REPO / "recipes" / "lfq_mnist.toml"
#: a few steps of the real LFQ recipe with 2^40 codes, two small evaluations
HUGE = [
    f"quantizer.codebook_size={K}",
    "model.channels=[8, 16]",
    "train.steps=4",
    "train.batch_size=8",
    "train.eval_every=2",
    "train.eval_samples=64",
    "train.checkpoint_every=4",
    "output.samples=8",
]
EVAL_TOKENS = 64 * 49  # the evaluations during training
SAMPLES = 100  # images of `tok eval` / `tok inspect`: 100 x 49 = 4900 tokens
TOKENS = SAMPLES * 49
MAX_RSS = 4 << 30

_DRIVER = """
import contextlib, io, json, sys
from tok import cli
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    # VmHWM: the peak of this process's own memory. Not ru_maxrss, which Linux carries
    # over exec from the parent (pytest, which may have grown to GBs by now)
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024  # kB
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue(), "peak": peak})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``tok train recipes/lfq_mnist.toml`` with 2^40 codes (4 steps, evaluated at steps 2
    and 4), then ``tok eval RUN --json`` and ``tok inspect RUN --out DIR``, in one fresh
    process: the run folder, the inspect folder and each command's result."""
    mnist_dir()
    root = tmp_path_factory.mktemp("huge")
    run, health = root / "lfq40", root / "health"
    sets = [a for s in [*HUGE, f"output.dir={run}"] for a in ("--set", s)]
    commands = [
        ["train", str(RECIPE), *sets, "--no-progress"],
        ["eval", str(run), "--samples", str(SAMPLES), "--json"],
        ["inspect", str(run), "--samples", str(SAMPLES), "--out", str(health)],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(commands)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr  # a dense count dies here: 8 TB
    train, evaluate, inspect = json.loads(proc.stdout)
    for name, result in (("train", train), ("eval", evaluate), ("inspect", inspect)):
        assert result["code"] == 0, result["err"]
        assert result["peak"] < MAX_RSS, f"peak memory after tok {name}: {result['peak']:,} bytes"
    return {"run": run, "health": health, "train": train, "eval": evaluate, "inspect": inspect}


def test_huge_codebook_trains_with_exact_figures_and_no_false_alarm(huge):
    run = huge["run"]
    assert json.loads((run / "state.json").read_text())["step"] == 4
    assert (run / "usage.png").is_file() and (run / "state.safetensors").is_file()
    # 3136 tokens cannot use 10 % of 2^40 codes; the collapse alarm judges
    # used / min(K, N) instead, and a freshly trained LFQ spreads its tokens widely
    assert "collapse" not in huge["train"]["err"], huge["train"]["err"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in rows if r["split"] == "test"]
    assert [r["step"] for r in tests] == [2, 4]
    for row in tests:
        (s,) = row["streams"]
        assert s["size"] == K and s["tokens"] == EVAL_TOKENS
        assert 0 < s["used"] <= EVAL_TOKENS and s["dead"] == K - s["used"]  # exact in JSON
        assert s["attainable_usage"] == s["used"] / EVAL_TOKENS > 0.1
        assert s["usage"] == s["used"] / K
        assert 1 <= s["perplexity"] <= s["used"]


def test_huge_codebook_eval_in_bounded_memory(huge):
    result = json.loads(huge["eval"]["out"])
    (s,) = result["streams"]
    assert result["images"] == SAMPLES and s["tokens"] == TOKENS
    assert s["size"] == K and s["dead"] == K - s["used"]
    assert s["attainable_usage"] == s["used"] / TOKENS
    assert s["perplexity_ratio"] <= 0.3  # at most log2 4900 / 40


def test_huge_codebook_inspect_in_bounded_memory(huge):
    out, text = huge["health"], huge["inspect"]["out"]
    report = json.loads((out / "health.json").read_text())
    (s,) = report["streams"]
    assert s == {"stream": 0, **json.loads(huge["eval"]["out"])["streams"][0], "collapsed": False}
    assert report["collapsed"] == []
    assert f"N = {TOKENS} tokens per stream" in text
    assert "every stream uses at least 10% of the min(K, N) codes" in text
    # the table prints K and the dead codes exactly, and a usage that is not "0.0%"
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STREAM"))
    assert lines[header].split()[-2:] == ["USED/MIN(K,N)", "STATUS"]
    row = lines[header + 2].split()
    assert row[:3] == ["0", str(K), f"{s['usage'] * 100:.2g}%"]
    assert row[6] == str(K - s["used"]) and row[-1] == "ok"
    for name in ("health.png", "usage_over_time.png"):
        assert (out / name).stat().st_size > 1000, name


def test_huge_codebook_encode_refuses_in_one_line(huge, capsys, tmp_path):
    """Token files hold at most int32 indices (docs/token-format.md): ``tok encode`` of a
    2^40-code tokenizer refuses before reading any image or making the folder."""
    out = tmp_path / "tokens"
    code, stdout, err = tok_cli(
        capsys, "encode", "mnist:test", "--out", out, "--tokenizer", huge["run"], "--limit", 8
    )
    assert code != 0 and stdout == ""
    one_error(err, str(K), "too large for a token file")
    assert not out.exists()
