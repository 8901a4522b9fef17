"""One writer per folder (tok.locks): a second tok command on a folder in use stops in one
line naming the holder's pid; a killed holder never blocks; the ranks of one torchrun job
are one writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RECIPE, TINY, one_error, snapshot, tok_subprocess

from tok.errors import FolderInUseError
from tok.locks import folder_lock, holder_pid, lock_file


def start_train(run: Path, *extra: str) -> subprocess.Popen:
    sets = [*TINY, *extra, f"output.dir='{run}'"]
    return subprocess.Popen(
        [sys.executable, "-m", "tok", "train", str(RECIPE), "--no-progress"]
        + [arg for s in sets for arg in ("--set", s)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the first tok train ended before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_one_writer_a_second_train_into_a_run_in_use_is_refused_and_a_killed_one_resumes(
    tmp_path,
):
    run = tmp_path / "run"
    first = start_train(run, "train.steps=100000", "train.checkpoint_every=5", "train.log_every=1")
    try:
        wait_for(lambda: (run / "state.safetensors").exists(), first, "its first checkpoint")
        assert holder_pid(lock_file(run)) == first.pid
        second = tok_subprocess(
            "train", RECIPE, "--no-progress", *["--set", f"output.dir='{run}'"], *["--set", TINY[0]]
        )
        one_error(second.stderr, str(run), f"is in use by another tok process (pid {first.pid})")
        assert second.returncode == 1
        resumed = tok_subprocess("train", "--resume", run, "--no-progress")
        one_error(resumed.stderr, f"(pid {first.pid})")
    finally:
        first.send_signal(signal.SIGKILL)  # as a killed job: no cleanup of any kind
        first.wait()
    # the lock died with its process: the run resumes, and its log counts up once
    saved = json.loads((run / "state.json").read_text())["step"]
    end = f"train.steps={saved + 5}"
    again = tok_subprocess("train", "--resume", run, "--no-progress", "--set", end)
    assert again.returncode == 0, again.stderr
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == list(range(1, saved + 6)), train_steps


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_one_writer_encode_and_decode_refuse_an_output_folder_in_use(
    command, trained_run, mnist_pngs, tmp_path
):
    out = tmp_path / "out"
    if command == "encode":
        args = ("encode", mnist_pngs, "--run", trained_run, "--out", out)
    else:
        tokens = tmp_path / "tokens"
        enc = tok_subprocess("encode", mnist_pngs, "--run", trained_run, "--out", tokens)
        assert enc.returncode == 0, enc.stderr
        args = ("decode", tokens, "--out", out)
    with folder_lock(out):  # this test process is the other writer
        refused = tok_subprocess(*args)
        one_error(refused.stderr, str(out), f"in use by another tok process (pid {os.getpid()})")
    assert not out.exists()  # the refused command wrote nothing
    done = tok_subprocess(*args)
    assert done.returncode == 0, done.stderr
    assert snapshot(out)


def test_one_writer_a_relative_path_and_a_symlink_name_the_same_folder(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    with folder_lock(tmp_path / "real"):
        for other in (Path("real"), tmp_path / "link", Path("link/../real")):
            with pytest.raises(FolderInUseError, match=f"pid {os.getpid()}"), folder_lock(other):
                pass


def test_one_writer_the_ranks_of_one_torchrun_job_are_one_writer(tmp_path):
    folder = tmp_path / "run"
    code = (
        "import sys\nfrom tok.locks import folder_lock\nfrom tok.errors import FolderInUseError\n"
        f"try:\n    with folder_lock({str(folder)!r}):\n        print('wrote')\n"
        "except FolderInUseError as e:\n    print(e)\n"
    )

    def as_rank(rank: str) -> str:
        env = {**os.environ, "RANK": rank}
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()

    with folder_lock(folder):  # held by this job's rank 0
        assert as_rank("1") == "wrote"  # the same job's other ranks take no lock of their own
        assert f"pid {os.getpid()}" in as_rank("0")  # another job's rank 0 is refused
    assert as_rank("0") == "wrote"
