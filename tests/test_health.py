"""Codebook health: ``tok.health`` and ``tok inspect`` on real trained runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import train_tiny
from PIL import Image

from tok import cli
from tok.data import Samples
from tok.health import (
    CollapseWarning,
    collapsed_streams,
    inspect_run,
    percent,
    stream_table,
    usage_history,
    warn_collapse,
)
from tok.metrics import batch_stream_stats, codebook_stats
from tok.models import Tokenizer
from tok.run import Run, evaluate

HEALTH_JSON, HEALTH_PNG, USAGE_PNG = Run.HEALTH_JSON, Run.HEALTH_PNG, Run.USAGE_OVER_TIME_PNG
OUTPUTS = (HEALTH_PNG, USAGE_PNG, HEALTH_JSON)


def tok_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("tok: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes every pixel: a truncated file fails here
        return im.size


def logged_test_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "test"]


@pytest.fixture(scope="module")
def starved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two FSQ streams of 32,768 codes each, evaluated twice during training."""
    return train_tiny(
        tmp_path_factory.mktemp("starved") / "starved",
        "quantizer.levels=[8, 8, 8, 8, 8]",
        "quantizer.num_codebooks=2",
        "train.eval_every=10",
    )


# codebook_stats ---------------------------------------------------------------


def test_codebook_stats_ratios():
    # 4 of 16 codes used uniformly: perplexity 4, log2 ratio 2/4, fraction 4/16
    stats = codebook_stats(torch.tensor([5, 5, 5, 5] + [0] * 12))
    assert stats["usage"] == 0.25 and stats["dead"] == 12 and stats["size"] == 16
    assert stats["perplexity"] == pytest.approx(4)
    assert stats["entropy_bits"] == pytest.approx(2)
    assert stats["perplexity_ratio"] == pytest.approx(0.5)
    assert stats["perplexity_fraction"] == pytest.approx(0.25)
    empty = codebook_stats(torch.zeros(8, dtype=torch.long))
    assert empty["usage"] == 0 and empty["dead"] == 8 and empty["perplexity_ratio"] == 0


def test_batch_stream_stats_per_stream():
    indices = torch.tensor([[0, 3], [1, 3], [0, 3], [1, 3]])  # stream 0: 2 codes, stream 1: 1
    s0, s1 = batch_stream_stats(indices, (4, 1 << 40))
    assert s0 == {"usage": 0.5, "perplexity": pytest.approx(2), "dead": 2}
    assert s1["usage"] == 1 / (1 << 40) and s1["perplexity"] == pytest.approx(1)
    assert s1["dead"] == (1 << 40) - 1


# usage_history -------------------------------------------------------------------


def test_usage_history_has_one_point_per_test_row():
    rows = [
        {"step": 5, "split": "train", "usage": 0.9},
        {"step": 10, "split": "test", "usage": 0.4, "streams": [
            {"usage": 0.3, "perplexity_ratio": 0.6}, {"usage": 0.5, "perplexity_ratio": 0.7}]},
        {"step": 20, "split": "test", "usage": 0.2},  # an older row without streams
    ]  # fmt: skip
    rows[1]["streams"][1]["attainable_usage"] = 0.9  # fewer tokens than codes
    history = usage_history(rows)
    assert history[0] == {
        "step": [10, 20],
        "usage": [0.3, 0.2],
        "attainable_usage": [0.3, 0.2],  # rows without it: the usage, as the alarm does
        "perplexity_ratio": [0.6, None],
    }
    assert history[1] == {
        "step": [10],
        "usage": [0.5],
        "attainable_usage": [0.9],
        "perplexity_ratio": [0.7],
    }
    assert usage_history([]) == []


# the collapse alarm ------------------------------------------------------------------


def stream(size: int, used: int, tokens: int) -> dict:
    """codebook_stats of ``used`` codes sharing ``tokens`` tokens as evenly as they can."""
    counts = torch.full((used,), tokens // used)
    counts[: tokens % used] += 1
    return codebook_stats(counts, size=size)


def test_collapse_alarm_is_judged_on_the_codes_the_tokens_could_use():
    # 4 test images x 49 positions = 196 tokens cannot use 10 % of 4096 codes: usage says
    # collapse whatever the tokenizer does; used / min(K, N) does not
    healthy, collapsed = stream(4096, 150, 196), stream(4096, 10, 196)
    assert healthy["usage"] < 0.1 and healthy["attainable_usage"] == 150 / 196
    assert collapsed["attainable_usage"] == 10 / 196
    # enough tokens for the codebook: the usage itself, as before
    small = stream(1000, 50, 5000)
    assert small["attainable_usage"] == small["usage"] == 0.05
    # 2^40 codes: 3000 tokens on 2900 codes is healthy, on 100 codes collapsed
    huge_ok, huge_bad = stream(1 << 40, 2900, 3000), stream(1 << 40, 100, 3000)
    streams = [healthy, collapsed, small, huge_ok, huge_bad]
    assert collapsed_streams(streams, 0.1) == [1, 2, 4]
    assert collapsed_streams(streams, 0.0) == []
    # a record from before attainable_usage existed is judged on its usage
    assert collapsed_streams([{"usage": 0.05, "size": 1000}], 0.1) == [0]


def test_collapse_warning_says_what_the_tokens_could_use(recwarn):
    streams = [stream(4096, 150, 196), stream(4096, 10, 196), stream(1000, 50, 5000)]
    warn_collapse(streams, 0.1, recipe="r", run="runs/r", step=7, images=4)
    messages = [str(w.message) for w in recwarn if issubclass(w.category, CollapseWarning)]
    assert len(messages) == 2
    assert messages[0] == (
        "tok: codebook collapse in recipe r (runs/r), stream 1 at step 7: 10 codes used by "
        "196 tokens (5.1% of the 196 they could use at most, of 4096 codes) on 4 test images "
        "(threshold train.collapse_threshold = 10%); see `tok inspect runs/r`"
    )
    assert "stream 2 at step 7: 50 of 1000 codes used (5.0%) by 5000 tokens on 4 " in messages[1]


def test_stream_table_prints_huge_codebooks_exactly():
    huge = stream(1 << 40, 2900, 3000)
    headers, rows = stream_table([huge], threshold=0.1)
    assert headers[-2:] == ["USED/MIN(K,N)", "STATUS"]
    assert rows[0][:3] == ["0", "1099511627776", f"{2900 / (1 << 40) * 100:.2g}%"]
    assert rows[0][1] == str(1 << 40) and rows[0][6] == str((1 << 40) - 2900)  # exact
    assert rows[0][4] == f"{huge['perplexity'] / (1 << 40):.2g}"  # not 0.000
    assert rows[0][-2:] == [percent(2900 / 3000), "ok"]
    assert percent(0.5) == "50.0%" and percent(0) == "0.0%" and percent(3e-9) == "3e-07%"
    headers, rows = stream_table([huge])  # tok eval: no alarm columns
    assert headers[-1] == "DEAD" and len(rows[0]) == len(headers)


# inspect ---------------------------------------------------------------------------


def test_inspect_numbers_match_evaluate(trained_run, tmp_path):
    out = tmp_path / "health"
    report = inspect_run(trained_run, samples=200, out=out)
    tokenizer = Tokenizer.load(trained_run)
    data = Run.open(trained_run).dataset().load("test")
    expected = evaluate(tokenizer, Samples(images=data.images[:200], keys=data.keys[:200]))

    saved = json.loads((out / HEALTH_JSON).read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["images"] == 200 and saved["split"] == "test"
    assert saved["recipe"] == "fsq_mnist" and saved["run"] == str(trained_run)
    for key in ("psnr", "mse", "usage", "perplexity", "bits_per_pixel"):
        assert saved[key] == pytest.approx(expected[key]), key
    assert len(saved["streams"]) == 1
    stream, want = saved["streams"][0], expected["streams"][0]
    for key, value in want.items():
        assert stream[key] == pytest.approx(value), key
    assert stream["size"] == 1000
    assert stream["dead"] == 1000 - expected["counts"].used(0)
    assert stream["tokens"] == 200 * 49 and stream["used"] == expected["counts"].used(0)
    assert stream["perplexity_ratio"] == pytest.approx(
        math.log2(want["perplexity"]) / math.log2(1000)
    )
    # the threshold is the run's, and the flag follows it
    assert saved["threshold"] == Run.open(trained_run).recipe().train.collapse_threshold
    assert stream["collapsed"] == (stream["usage"] < saved["threshold"])
    # charts are real PNGs; the run folder was not written to
    assert png_size(out / HEALTH_PNG)[0] > 100
    assert png_size(out / USAGE_PNG)[0] > 100
    assert not any((trained_run / name).exists() for name in OUTPUTS)
    assert not list(out.glob(".tmp-*"))


def test_inspect_cli_writes_into_the_run_folder(capsys, trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, out, err = tok_cli(capsys, "inspect", run, "--samples", "100")
    assert code == 0, err
    for name in OUTPUTS:
        assert (run / name).is_file(), name
    # nothing it did not write changed
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name not in OUTPUTS} == before
    report = json.loads((run / HEALTH_JSON).read_text())
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("STREAM"))
    for column in (
        "CODES", "USAGE", "PERPLEXITY", "PPL/K", "LOG2-RATIO", "DEAD", "USED/MIN(K,N)", "STATUS",
    ):  # fmt: skip
        assert column in header
    s = report["streams"][0]
    row = lines[lines.index(header) + 2].split()
    assert row == [
        "0",
        "1000",
        f"{s['usage']:.1%}",
        f"{s['perplexity']:.1f}",
        f"{s['perplexity_fraction']:.3f}",
        f"{s['perplexity_ratio']:.3f}",
        str(s["dead"]),
        f"{s['attainable_usage']:.1%}",
        "COLLAPSED" if s["collapsed"] else "ok",
    ]
    assert s["attainable_usage"] == s["usage"]  # 4900 tokens, 1000 codes: the usage
    assert "N = 4900 tokens per stream" in lines[0]
    # the usage-over-time chart has one point per test row of the log
    assert len(report["history"][0]["step"]) == len(logged_test_rows(run)) >= 1

    code, out_json, err = tok_cli(capsys, "inspect", run, "--samples", "100", "--json")
    assert code == 0, err
    assert json.loads(out_json)["streams"] == report["streams"]


def test_inspect_does_not_flag_a_codebook_for_outnumbering_the_tokens(
    capsys, starved_run, tmp_path
):
    out = tmp_path / "health"
    # 16 images x 49 positions = 784 tokens can use at most 784 of 32768 codes (2.4 %):
    # below the 10 % threshold in usage, whatever the tokenizer; judged on min(K, N) instead
    code, text, err = tok_cli(capsys, "inspect", starved_run, "--samples", "16", "--out", out)
    assert code == 0, err
    report = json.loads((out / HEALTH_JSON).read_text())
    assert report["threshold"] == pytest.approx(0.1)
    streams = report["streams"]
    for s in streams:
        assert s["size"] == 32768 and s["tokens"] == 784 and s["usage"] < 0.024
        assert s["attainable_usage"] == s["used"] / 784
        assert s["collapsed"] == (s["attainable_usage"] < 0.1)
    assert report["collapsed"] == [s["stream"] for s in streams if s["collapsed"]]
    if not report["collapsed"]:  # (20 steps spread 784 tokens over some 130-180 codes)
        assert "every stream uses at least 10% of the min(K, N) codes" in text
    # two evaluations during training: two points per stream over time
    assert [h["step"] for h in report["history"]] == [[10, 20], [10, 20]]
    assert len(logged_test_rows(starved_run)) == 2
    assert all(h["attainable_usage"] != h["usage"] for h in report["history"])
    # one panel per stream: the histogram is taller than a one-stream chart
    assert png_size(out / HEALTH_PNG)[1] > png_size(out / USAGE_PNG)[1]

    # a threshold above both streams' figure flags both, and says why
    above = f"{max(s['attainable_usage'] for s in streams) + 0.01:.3f}"
    code, text, err = tok_cli(
        capsys, "inspect", starved_run, "--samples", "16", "--out", out, "--threshold", above
    )
    assert code == 0, err
    assert json.loads((out / HEALTH_JSON).read_text())["collapsed"] == [0, 1]
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STREAM"))
    table = [line.split() for line in lines[header + 2 : header + 4]]
    assert [r[0] for r in table] == ["0", "1"]
    assert all(r[1] == "32768" and r[-1] == "COLLAPSED" for r in table)
    for s in streams:
        want = (
            f"COLLAPSED: stream {s['stream']}: {s['used']} codes used by 784 tokens "
            f"({s['attainable_usage']:.1%} of the 784 they could use at most, of 32768 codes)"
        )
        assert any(line.startswith(want) for line in lines), text


def test_eval_prints_a_row_per_stream(capsys, starved_run):
    code, out, err = tok_cli(capsys, "eval", starved_run, "--samples", "16")
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STREAM"))
    assert "STATUS" not in lines[header]
    assert [line.split()[:2] for line in lines[header + 2 :]] == [["0", "32768"], ["1", "32768"]]
    assert "tokens (N)      784 per stream" in out


@pytest.mark.parametrize("what", ["missing", "empty", "other files"])
def test_inspect_of_a_folder_that_is_not_a_run(capsys, tmp_path, what):
    folder = tmp_path / "notarun"
    if what != "missing":
        folder.mkdir()
    if what == "other files":
        (folder / "notes.txt").write_text("mine\n")
    code, out, err = tok_cli(capsys, "inspect", folder)
    assert code != 0 and out == ""
    one_error(err, str(folder), "not a run folder")
    if what == "missing":
        assert not folder.exists()
    else:
        assert sorted(p.name for p in folder.iterdir()) == (
            ["notes.txt"] if what == "other files" else []
        )


def test_inspect_refuses_bad_options(capsys, trained_run, tmp_path):
    code, _, err = tok_cli(capsys, "inspect", trained_run, "--samples", "-1")
    assert code != 0
    one_error(err, "--samples", "-1")
    code, _, err = tok_cli(capsys, "inspect", trained_run, "--threshold", "7")
    assert code != 0
    one_error(err, "--threshold", "7")
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine\n")
    code, _, err = tok_cli(capsys, "inspect", trained_run, "--out", a_file)
    assert code != 0
    one_error(err, str(a_file), "not a folder")
    assert a_file.read_text() == "mine\n"
    assert not any((trained_run / name).exists() for name in OUTPUTS)
