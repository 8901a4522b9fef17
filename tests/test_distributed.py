"""``tok train`` under torchrun: real gloo processes on the CPU, compared with one process
(:mod:`tok.distributed`, :mod:`tok.train`).

Every launch here is the command a user types — ``python -m torch.distributed.run``
is ``torchrun`` — with one thread per process, as torchrun sets by default.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest
import torch
from conftest import RECIPE, TINY, mnist_dir, one_error, photos_dir, snapshot
from safetensors.torch import load_file

from tok.components import build
from tok.models import Tokenizer

if not torch.distributed.is_available():  # pragma: no cover - every CPU wheel has it
    pytest.skip("torch.distributed is missing", allow_module_level=True)

#: a small conv tokenizer, one log row per step
SMALL = [
    *TINY,
    "model.channels=[8, 16]",
    "train.batch_size=8",
    "train.log_every=1",
    "train.threads=1",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(run: Path, *sets: str, recipe: Path | str = RECIPE) -> list[str]:
    """``tok train RECIPE --no-progress --set …`` (the part after ``torchrun … -m``)."""
    args = ["tok", "train", str(recipe), "--no-progress"]
    for item in [*SMALL, *sets, f"output.dir='{run}'"]:
        args += ["--set", item]
    return args


def launch(cmd: list[str], *, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def torchrun(*args: str, nproc: int = 2, **kw) -> subprocess.CompletedProcess[str]:
    return launch([*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", *args], **kw)


def alone(*args: str) -> subprocess.CompletedProcess[str]:
    return launch([sys.executable, "-m", *args])


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 20 steps trained alone and by 2 processes under torchrun."""
    mnist_dir()
    tmp = tmp_path_factory.mktemp("ddp")
    ok(alone(*train_cmd(tmp / "alone")))
    ok(torchrun(*train_cmd(tmp / "two")))
    return {"alone": tmp / "alone", "two": tmp / "two"}


def test_two_processes_match_one_step_by_step(runs):
    """Same global batches, same seed: the two runs agree with one process holding the whole
    batch. Not bit for bit: each rank averages its 4 rows' gradients and the all-reduce
    averages the two halves — the same sum in another order, so rounding differs (about
    1e-7 relative). Measured after 20 steps: losses within 1.3e-7 relative at every step,
    identical tokens, reconstructions within 1e-6. Single weights can differ more (up to
    1e-3 here): a bias right before a GroupNorm has a gradient that is zero in exact
    arithmetic, and Adam, which divides by the gradient's own scale, turns its rounding noise
    into full-size steps of either sign. Those weights do not change the output, so the
    function is compared tightly and the weights only against that bound (lr × steps)."""
    one, two = losses(runs["alone"]), losses(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, 21))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    assert one[20] < one[1] * 0.9  # it trained: a comparison of two untrained runs is empty

    dataset = build("datasets", "mnist", {})
    x = dataset.read("test", dataset.keys("test")[:256]).floats()
    a, b = Tokenizer.load(runs["alone"]), Tokenizer.load(runs["two"])
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x))
        torch.testing.assert_close(b.reconstruct(x), a.reconstruct(x), rtol=0, atol=1e-5)
    w1, w2 = weights(runs["alone"]), weights(runs["two"])
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=2e-3 * 20, msg=name)


def test_rank_zero_alone_writes_the_run(runs):
    """One metrics row per step (not one per rank), the run's usual files, no stray files."""
    assert len(losses(runs["two"])) == 20
    names = {p.name for p in runs["two"].iterdir()}
    assert {p.name for p in runs["alone"].iterdir()} == names
    state = json.loads((runs["two"] / "state.json").read_text())
    assert state["step"] == 20


def test_resume_with_another_number_of_processes_is_refused(runs, tmp_path):
    """The checkpoint holds 2 ranks' RNG states: alone, the resume stops before any work."""
    before = snapshot(runs["two"])
    proc = alone("tok", "train", "--resume", str(runs["two"]), "--set", "train.steps=24")
    assert proc.returncode == 1
    one_error(proc.stderr, "cannot resume", "it was trained by 2", "--nproc-per-node=2")
    assert snapshot(runs["two"]) == before


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL to the whole torchrun process group at an arbitrary step, then ``--resume``
    under torchrun: the same weights, and the same losses after the checkpoint, bit for bit,
    as a run never stopped (every rank's RNG state and the batch generator are in the
    checkpoint; gloo sums two tensors the same way each time)."""
    mnist_dir()
    sets = ["train.steps=160", "train.checkpoint_every=40", "train.eval_every=160"]
    ok(torchrun(*train_cmd(tmp_path / "straight", *sets)))

    run = tmp_path / "killed"
    kill_at = random.Random(13).randrange(50, 150)  # between checkpoints, not on one
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", *train_cmd(run, *sets)]
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= kill_at:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-step
    proc.wait()
    stopped = max(losses(run))
    assert 40 <= stopped < 160, stopped

    ok(torchrun("tok", "train", "--resume", str(run), "--no-progress"))
    straight, resumed = weights(tmp_path / "straight"), weights(run)
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    assert losses(run) == losses(tmp_path / "straight")


def workers(pid: int) -> list[int]:
    """The pids of the processes ``pid`` (torchrun) started: its ranks."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    assert len(found) == 2, found
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nproc_and_two_nodes_train_the_same_run(tmp_path):
    """``tok train --nproc 2`` and two "nodes" of one process each, meeting over
    127.0.0.1 (torchrun's c10d rendezvous, as the README's multi-node command), end with
    the same weights, bit for bit: the same ranks compute the same shares."""
    mnist_dir()
    nproc = alone(*train_cmd(tmp_path / "nproc"), "--nproc", "2")
    ok(nproc)
    assert "run folder:" in nproc.stdout  # rank 0 reports, once
    assert nproc.stdout.count("run folder:") == 1

    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=tok-test",
                "-m",
                *train_cmd(tmp_path / "nodes"),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for node in nodes:
        out, err = node.communicate(timeout=240)
        assert node.returncode == 0, out + err
    a, b = weights(tmp_path / "nproc"), weights(tmp_path / "nodes")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (["train.batch_size=7"], ["train.batch_size = 7", "does not split over 2 processes"]),
        (["model.norm='batch'"], ["norm = 'batch'", "SyncBatchNorm runs on GPUs only"]),
    ],
    ids=["batch-does-not-divide", "batch-norm-on-cpu"],
)
def test_what_cannot_train_under_torchrun_is_one_line(tmp_path, sets, needles):
    """Said once (by rank 0), before the run folder exists."""
    mnist_dir()
    proc = torchrun(*train_cmd(tmp_path / "run", *sets))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tok: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def encode_cmd(run: Path, src: Path | str, out: Path, *extra: str) -> list[str]:
    """``tok encode SRC --tokenizer RUN --out OUT`` in shards of 20 rows, batches of 8."""
    return ["tok", "encode", str(src), "--tokenizer", str(run), "--out", str(out),
            "--shard-size", "20", "--batch-size", "8", "--no-progress", *extra]  # fmt: skip


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_process_encode_equals_one_process_byte_for_byte(trained_run, mnist_pngs, tmp_path):
    """``tok encode --nproc 2``: rank r encodes shards r, r + 2, …, rank 0 adopts rank 1's
    into the manifest. Every file — shards, manifest with its skipped key — is the same,
    byte for byte, as one process's with one thread: the forward batches are cut from each
    shard's start, and token files sort their metadata. A truncated JPEG in shard 1 (rank
    1's) is skipped there, named once, and recorded."""
    src = tmp_path / "src"
    src.mkdir()
    pngs = sorted(mnist_pngs.rglob("*.png"))[:200]
    for i, png in enumerate(pngs):
        (src / f"d{i:03d}.png").write_bytes(png.read_bytes())
    jpeg = io.BytesIO()
    PIL.Image.open(pngs[0]).save(jpeg, "JPEG")
    data = jpeg.getvalue()
    (src / "d030x.jpg").write_bytes(data[: len(data) * 2 // 3])  # header reads, pixels do not

    one = alone(*encode_cmd(trained_run, src, tmp_path / "one", "--threads", "1"))
    ok(one)
    two = alone(*encode_cmd(trained_run, src, tmp_path / "two", "--nproc", "2"))
    ok(two)
    assert two.stdout.count("wrote 200 rows") == 1  # rank 0 reports
    assert two.stderr.count("d030x.jpg") == 1, two.stderr  # rank 1 read it, and says so
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["shards"][1]["skipped"] == ["d030x"] and manifest["complete"]
    assert contents(tmp_path / "two") == contents(tmp_path / "one")
    assert len(contents(tmp_path / "one")) == 12  # 11 shards and the manifest


def test_two_process_latent_encode_equals_one_process_byte_for_byte(
    trained_vae, mnist_pngs, tmp_path
):
    """A continuous tokenizer's latent files go through the same shared path: rank 1's
    shards are adopted by rank 0, and every file equals one process's, byte for byte."""
    src = tmp_path / "src"
    src.mkdir()
    for i, png in enumerate(sorted(mnist_pngs.rglob("*.png"))[:70]):
        (src / f"d{i:03d}.png").write_bytes(png.read_bytes())
    bf16 = ("--latent-dtype", "bfloat16")
    ok(alone(*encode_cmd(trained_vae, src, tmp_path / "one", "--threads", "1", *bf16)))
    two = alone(*encode_cmd(trained_vae, src, tmp_path / "two", "--nproc", "2", *bf16))
    ok(two)
    assert two.stdout.count("wrote 70 rows of latents 1x20 (bfloat16) in 4 shard(s)") == 1
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["format"] == "tok.manifest/3" and manifest["complete"]
    assert contents(tmp_path / "two") == contents(tmp_path / "one")
    assert len(contents(tmp_path / "one")) == 5  # 4 shards and the manifest


def test_two_process_ragged_encode_equals_one_process_byte_for_byte(photo_run, tmp_path):
    """``--resize keep``: the full-size test photos (8 sizes) in shards of 3 ragged rows,
    rank 1's shards adopted by rank 0, every file as one process's, byte for byte."""
    src = photos_dir() / "test"
    keep = ("--resize", "keep", "--shard-size", "3")
    ok(alone("tok", "encode", str(src), "--tokenizer", str(photo_run), "--out",
             str(tmp_path / "one"), "--no-progress", "--threads", "1", *keep))  # fmt: skip
    two = alone("tok", "encode", str(src), "--tokenizer", str(photo_run), "--out",
                str(tmp_path / "two"), "--no-progress", "--nproc", "2", *keep)  # fmt: skip
    ok(two)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["format"] == "tok.manifest/4" and manifest["num_items"] == 11
    assert contents(tmp_path / "two") == contents(tmp_path / "one")
    assert len(contents(tmp_path / "one")) == 5  # 4 shards and the manifest


def test_killed_encode_resumes_without_redoing_finished_shards(trained_run, tmp_path):
    """SIGKILL to one rank part way (torchrun then stops the other), then the same
    command: the shard files already there are kept as they are (same inode and time: not
    rewritten) and adopted, and the folder ends byte for byte as one never stopped."""
    mnist_dir()
    straight, out = tmp_path / "straight", tmp_path / "killed"
    ok(alone(*encode_cmd(trained_run, "mnist:test", straight, "--threads", "1")))
    cmd = [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m",
           *encode_cmd(trained_run, "mnist:test", out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("*.safetensors"))) >= 40:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the encode ended before it could be killed"
    os.kill(random.Random(5).choice(workers(proc.pid)), signal.SIGKILL)  # one rank
    assert proc.wait(timeout=60) != 0  # torchrun stops the other rank, and fails
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.safetensors")}
    assert 40 <= len(kept) < 500, len(kept)

    again = torchrun(*encode_cmd(trained_run, "mnist:test", out))
    ok(again)
    assert f"({len(kept)} shard(s) were already done)" in again.stdout, again.stdout
    for name, stat in kept.items():
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stat, name
    assert contents(out) == contents(straight)


def test_errors_under_nproc_are_one_line(trained_run, tmp_path):
    """``--nproc`` runs torch's elastic agent in tok's own process: a failure is the ranks'
    one line, without the agent's report and traceback; the other ranks leave quietly
    rather than crash at a collective (``leading``/``follow``), and nothing is written."""
    mnist_dir()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine\n")
    encode = alone(*encode_cmd(trained_run, "mnist:test", taken, "--nproc", "2"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    train = alone(*train_cmd(run), "--nproc", "2")
    for proc, needle in ((encode, "is not a tok token folder"), (train, "already exists")):
        assert proc.returncode == 1, proc.stderr
        one_error(proc.stderr, str(needle))
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", ["decode", "eval", "inspect", "shards"])
def test_commands_that_do_not_split_refuse_torchrun(command, tmp_path):
    """Each rank would do the whole job into the same output: one line, nothing written."""
    args = {
        "decode": ["decode", str(tmp_path / "tokens"), "--out", str(tmp_path / "out")],
        "eval": ["eval", str(tmp_path / "run")],
        "inspect": ["inspect", str(tmp_path / "run")],
        "shards": ["shards", str(tmp_path / "src"), "--out", str(tmp_path / "out")],
    }[command]
    proc = torchrun("tok", *args)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tok: error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"tok {command} runs as one process" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_source_with_nothing_decodable_leaves_nothing_under_nproc(
    trained_run, mnist_pngs, tmp_path
):
    """Truncated JPEGs pass the listing (their headers read) and fail to decode on both
    ranks: rank 0 removes the manifest and empty shards it wrote, and an --out folder the
    user made beforehand stays, empty; the error is one line."""
    src = tmp_path / "src"
    src.mkdir()
    jpeg = io.BytesIO()
    PIL.Image.open(sorted(mnist_pngs.rglob("*.png"))[0]).save(jpeg, "JPEG")
    for name in ("a", "b", "c"):
        (src / f"{name}.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3])
    made = tmp_path / "made"
    made.mkdir()
    for out in (tmp_path / "new", made):
        proc = alone(*encode_cmd(trained_run, src, out, "--shard-size", "1", "--nproc", "2"))
        errors = [line for line in proc.stderr.splitlines() if line.startswith("tok: error:")]
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr
        assert "none of the 3" in errors[0], errors[0]
    assert not (tmp_path / "new").exists()
    assert made.is_dir() and not any(made.iterdir())
