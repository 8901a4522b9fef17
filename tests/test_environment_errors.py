"""Errors from the environment (issue 11, kind 1): a full disk and a read-only folder give one
``tok: error:`` line naming the file and what survived, and nothing is lost.

The disks are real: each case runs in a private mount namespace (``unshare``) with a small
tmpfs or a read-only bind mount, so nothing outside the test sees them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPE, TINY, one_error

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def namespaces_work() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not namespaces_work(), reason="needs Linux mount namespaces (unshare --user --mount)"
)


def in_namespace(script: str, tmp_path: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run the python ``script`` in a private mount namespace; it fills ``results`` (name →
    (returncode, stdout, stderr)), which come back."""
    out = tmp_path / "results.json"
    prelude = (
        "import json, os, subprocess, sys\n"
        "results = {}\n"
        "def mount(*args):\n"
        "    subprocess.run(['mount', *args], check=True)\n"
        "def tok(name, *args):\n"
        "    p = subprocess.run([sys.executable, '-m', 'tok', *map(str, args)],\n"
        "                       capture_output=True, text=True,\n"
        "                       env={**os.environ, 'OMP_NUM_THREADS': '1'})\n"
        "    results[name] = [p.returncode, p.stdout, p.stderr]\n"
    )
    epilogue = f"\njson.dump(results, open({str(out)!r}, 'w'))\n"
    done = subprocess.run(
        [*UNSHARE, sys.executable, "-c", prelude + script + epilogue],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return {
        k: subprocess.CompletedProcess([], rc, so, se)
        for k, (rc, so, se) in json.loads(out.read_text()).items()
    }


def test_environment_errors_a_full_disk_on_resume_keeps_the_checkpoint_and_says_so(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    run = disk / "run"
    sets = [f"--set={s}" for s in [*TINY, f"output.dir='{run}'"]]
    results = in_namespace(
        f"""
mount('-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', {str(disk)!r})
tok('first', 'train', {str(RECIPE)!r}, '--no-progress', *{sets!r})
before = open({str(run / "state.safetensors")!r}, 'rb').read()
with open({str(disk / "filler")!r}, 'wb') as f:  # fill the disk to the last byte
    try:
        while True:
            f.write(b'0' * 65536)
            f.flush()
    except OSError:
        pass
tok('full', 'train', '--resume', {str(run)!r}, '--no-progress', '--set', 'train.steps=40')
results['intact'] = [int(open({str(run / "state.safetensors")!r}, 'rb').read() == before), '', '']
os.remove({str(disk / "filler")!r})
tok('freed', 'train', '--resume', {str(run)!r}, '--no-progress', '--set', 'train.steps=40')
""",
        tmp_path,
    )
    assert results["first"].returncode == 0, results["first"].stderr
    full = results["full"]
    assert full.returncode == 1
    line = one_error(full.stderr, "No space left on device", "the checkpoint of step 20 is intact")
    assert str(run) in line
    assert results["intact"].returncode == 1  # state.safetensors byte for byte
    assert results["freed"].returncode == 0, results["freed"].stderr  # and it resumes


def test_environment_errors_inspect_of_a_read_only_run_refuses_before_evaluating(
    trained_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in run.iterdir())
    results = in_namespace(
        f"""
mount('--bind', {str(run)!r}, {str(run)!r})
mount('-o', 'remount,bind,ro', {str(run)!r})
tok('inspect', 'inspect', {str(run)!r})
tok('encode', 'encode', 'mnist:test', '--run', {str(run)!r}, '--out', {str(run / "tokens")!r})
""",
        tmp_path,
    )
    inspect = results["inspect"]
    assert inspect.returncode == 1 and inspect.stdout == ""  # nothing evaluated, nothing shown
    one_error(inspect.stderr, f"cannot write health.png and health.json in {run}", "read-only")
    encode = results["encode"]
    one_error(encode.stderr, f"cannot write tokens in {run}", "read-only")
    assert sorted(p.name for p in run.iterdir()) == before


def test_environment_errors_encode_on_a_full_disk_keeps_the_finished_shards(
    trained_run, mnist_pngs, tmp_path
):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "tokens"
    results = in_namespace(
        f"""
mount('-t', 'tmpfs', '-o', 'size=160k', 'tmpfs', {str(disk)!r})
tok('full', 'encode', {str(mnist_pngs)!r}, '--run', {str(trained_run)!r}, '--out', {str(out)!r},
    '--shard-size', '100', '--no-progress')
done = sorted(n for n in os.listdir({str(out)!r}) if n.endswith('.safetensors'))
results['done'] = [len(done), '', '']
subprocess.run(['mount', '-o', 'remount,size=8m', {str(disk)!r}], check=True)
tok('again', 'encode', {str(mnist_pngs)!r}, '--run', {str(trained_run)!r}, '--out', {str(out)!r},
    '--shard-size', '100', '--no-progress')
""",
        tmp_path,
    )
    full = results["full"]
    line = one_error(full.stderr, "No space left on device", "shards are written and kept")
    done = results["done"].returncode
    assert 0 < done < 10 and f"{done} of 10 shards" in line
    again = results["again"]
    assert again.returncode == 0, again.stderr
    assert "wrote 1000 rows" in again.stdout


def drop_read_override() -> list[str] | None:
    """A command prefix that runs without the power to read any file (root's DAC override),
    or ``None`` where that is not possible; an ordinary user needs none."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all"]
    return prefix if subprocess.run([*prefix, "true"]).returncode == 0 else None


@pytest.mark.parametrize("what", ["weights", "tokens"])
def test_environment_errors_an_unreadable_file_is_named_with_the_os_cause(
    what, trained_run, mnist_pngs, tmp_path
):
    # safetensors says "No such file or directory" for a file it may not read
    prefix = drop_read_override()
    if prefix is None:
        pytest.skip("cannot drop root's read override here")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tokens = tmp_path / "tokens"
    enc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tok",
            "encode",
            str(mnist_pngs),
            "--run",
            str(run),
            "--out",
            str(tokens),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert enc.returncode == 0, enc.stderr
    locked = run / "model.safetensors" if what == "weights" else tokens / "00000.safetensors"
    locked.chmod(0)
    args = (
        ["inspect", str(run)]
        if what == "weights"
        else ["decode", str(tokens), "--out", str(tmp_path / "images")]
    )
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tok", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    one_error(done.stderr, f"cannot read {locked}: Permission denied")
