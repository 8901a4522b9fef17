"""``tok encode`` / ``tok decode`` end to end, on real MNIST digits and a real (tiny) run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import one_error, snapshot, tok_cli, tok_subprocess
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.io import decode_image, write_png

from tok import cli, hookimpl
from tok.media import to_uint8
from tok.models import Tokenizer
from tok.tokens import FORMAT, keys_sha256, load_tokens, read_tokens

# torchvision >= 0.29 warns on every decode_image/write_png this test calls itself
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

NUM = 1000  # tests/conftest.py NUM_PNGS
DECODE_BATCH = 256  # tok decode's default --batch-size


# helpers ---------------------------------------------------------------------


def last_error(err: str, *needles: str) -> str:
    """The single ``tok: error:`` line of ``err`` (warnings may precede it), holding every needle."""
    assert "Traceback" not in err, err
    errors = [line for line in err.strip().splitlines() if line.startswith("tok: error: ")]
    assert len(errors) == 1, f"expected one 'tok: error:' line, got:\n{err}"
    for needle in needles:
        assert str(needle) in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def png_keys(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.png"))


def read_pngs(folder: Path, keys: list[str]) -> torch.Tensor:
    return torch.stack([decode_image(str(folder / f"{k}.png")) for k in keys])


def small_folder(src: Path, dst: Path, n: int) -> list[Path]:
    """Copy the first ``n`` digit PNGs of ``src`` into ``dst`` (flat); return the copies."""
    dst.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, p in enumerate(sorted(src.rglob("*.png"))[:n]):
        copies.append(dst / f"d{i:03d}.png")
        shutil.copy(p, copies[-1])
    return copies


# the main round trip ---------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(trained_run: Path, mnist_pngs: Path, tmp_path_factory: pytest.TempPathFactory):
    """1000 digits encoded by a real ``python -m tok`` subprocess, decoded with ``cli.main``."""
    work = tmp_path_factory.mktemp("encoded")
    tokens, decoded = work / "tokens", work / "decoded"
    proc = tok_subprocess(
        "encode",
        mnist_pngs,
        "--out",
        tokens,
        "--run",
        trained_run,
        "--shard-size",
        "250",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert f"wrote {NUM} rows" in proc.stdout
    assert "4 shard(s)" in proc.stdout
    assert cli.main(["decode", str(tokens), "--out", str(decoded), "--no-progress"]) == 0
    return tokens, decoded


def test_decoded_pngs_equal_the_tokenizers_reconstructions(encoded, trained_run, mnist_pngs):
    tokens, decoded = encoded
    keys = png_keys(mnist_pngs)
    assert len(keys) == NUM and all("/" in k for k in keys)
    # exactly one PNG per source image, at the same relative path
    assert png_keys(decoded) == keys
    assert sorted(p.relative_to(decoded).as_posix() for p in decoded.rglob("*") if p.is_file()) == [
        f"{k}.png" for k in keys
    ]

    source = read_pngs(mnist_pngs, keys)
    got = read_pngs(decoded, keys)
    assert got.dtype == torch.uint8 and got.shape == (NUM, 1, 28, 28)

    tokenizer = Tokenizer.load(trained_run)
    x = source.float() / 255
    # tok decode runs batches of 256 over the rows in key order; conv kernels may
    # round the last bit differently for other batch shapes (batch 1 differs), so
    # the reference uses the same batches
    want = torch.cat(
        [
            to_uint8(tokenizer.reconstruct(x[i : i + DECODE_BATCH]))
            for i in range(0, NUM, DECODE_BATCH)
        ]
    )
    diff = (got.int() - want.int()).abs()
    assert torch.equal(got, want), (
        f"{int((diff > 0).sum())} pixels differ (max {int(diff.max())}) between tok decode's PNGs "
        "and Tokenizer.reconstruct"
    )
    # the reconstructions are not the sources (20 training steps)
    assert not torch.equal(got, source)

    # the stored tokens are the tokenizer's own tokens of those images
    tf = load_tokens(tokens)
    assert tf.keys == keys
    # (encode ran one batch per 250-row shard)
    assert torch.equal(
        tf.tokens, torch.cat([tokenizer.encode(x[i : i + 250]) for i in range(0, NUM, 250)])
    )


def test_shards_carry_the_metadata_and_the_manifest_is_complete(encoded, trained_run, mnist_pngs):
    tokens, _ = encoded
    keys = png_keys(mnist_pngs)
    sha = hashlib.sha256((trained_run / "model.safetensors").read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        out = subprocess.run(
            ["sha256sum", str(trained_run / "model.safetensors")], capture_output=True, text=True
        )
        assert out.stdout.split()[0] == sha
    quantizer_config = Tokenizer.load(trained_run).quantizer.config()
    assert quantizer_config["levels"] == [8, 5, 5, 5]

    shards = sorted(p.name for p in tokens.iterdir())
    assert shards == [f"{i:05d}.safetensors" for i in range(4)] + ["manifest.json"]
    for i in range(4):
        path = tokens / f"{i:05d}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            assert list(f.keys()) == ["tokens"]
            raw = f.get_tensor("tokens")
        assert meta["format"] == FORMAT == "tok.tokens/2"
        assert json.loads(meta["plugins"])["quantizer"]["distribution"] == "tok-vision"
        assert meta["quantizer"] == "fsq"
        assert json.loads(meta["quantizer_config"]) == quantizer_config
        assert json.loads(meta["codebook_sizes"]) == [1000]
        assert json.loads(meta["grid"]) == [7, 7]
        assert json.loads(meta["keys"]) == keys[i * 250 : (i + 1) * 250]
        assert meta["tokenizer_sha256"] == sha
        # K = 1000 does not fit uint8: stored as int16, read back as int64
        assert raw.dtype == torch.int16
        assert raw.shape == (250, 7, 7, 1)
        assert int(raw.min()) >= 0 and int(raw.max()) < 1000
        tf = read_tokens(path)
        assert tf.tokens.dtype == torch.int64 and torch.equal(tf.tokens, raw.long())

    manifest = json.loads((tokens / "manifest.json").read_text())
    assert manifest["format"] == "tok.manifest/2"
    assert manifest["complete"] is True
    assert manifest["num_items"] == manifest["planned_items"] == NUM
    assert manifest["shard_size"] == 250
    assert manifest["keys_sha256"] == manifest["planned_keys_sha256"] == keys_sha256(keys)
    assert manifest["shards"] == [
        {"file": f"{i:05d}.safetensors", "planned": 250, "count": 250, "skipped": [], "done": True}
        for i in range(4)
    ]
    assert manifest["header"]["tokenizer_sha256"] == sha
    assert manifest["header"]["quantizer"] == "fsq"
    assert manifest["header"]["grid"] == [7, 7]
    assert manifest["header"]["codebook_sizes"] == [1000]


def test_encoding_again_into_a_finished_folder_redoes_nothing(
    encoded, trained_run, mnist_pngs, capsys
):
    tokens, _ = encoded
    before = snapshot(tokens)
    code, out, err = tok_cli(
        capsys,
        "encode",
        mnist_pngs,
        "--out",
        tokens,
        "--run",
        trained_run,
        "--shard-size",
        "250",
        "--no-progress",
    )
    assert code == 0, err
    assert "(4 shard(s) were already done)" in out
    assert snapshot(tokens) == before


# resume after a kill ---------------------------------------------------------


def _done_shards(manifest: Path) -> list[str]:
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):  # not there yet (it is replaced atomically, never partial)
        return []
    return [s["file"] for s in m["shards"] if s["done"]]


def test_killed_encode_resumes_without_redoing_shards(trained_run, mnist_pngs, tmp_path, capsys):
    out = tmp_path / "tokens"
    args = ["encode", mnist_pngs, "--out", out, "--run", trained_run]
    args += ["--shard-size", "50", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tok", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while len(_done_shards(out / "manifest.json")) < 3:
            assert proc.poll() is None, (
                f"encode ended (rc {proc.returncode}) before 3 shards were done: "
                f"{proc.stderr.read().decode()}"
            )
            assert time.monotonic() < deadline, "encode made no progress"
            time.sleep(0.005)
        # 20 shards of 50 single-image passes: far from done when 3 are
        assert proc.poll() is None, "encode finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    manifest = json.loads((out / "manifest.json").read_text())
    done = [s["file"] for s in manifest["shards"] if s["done"]]
    assert 3 <= len(done) < 20 and manifest["complete"] is False
    # no half-written file is visible: every shard there reads cleanly
    visible = sorted(p for p in out.glob("*.safetensors") if not p.name.startswith("."))
    assert set(p.name for p in visible) >= set(done)
    for p in visible:
        assert len(read_tokens(p)) == 50
    mtimes = {name: (out / name).stat().st_mtime_ns for name in done}

    code, stdout, err = tok_cli(capsys, *args)
    assert code == 0, err
    assert f"({len(done)} shard(s) were already done)" in stdout
    assert {name: (out / name).stat().st_mtime_ns for name in done} == mtimes
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.safetensors" for i in range(20)] + [
        "manifest.json"
    ]
    assert json.loads((out / "manifest.json").read_text())["complete"] is True

    decoded = tmp_path / "decoded"
    code, stdout, err = tok_cli(capsys, "decode", out, "--out", decoded, "--no-progress")
    assert code == 0, err
    assert f"wrote {NUM} images" in stdout
    assert png_keys(decoded) == png_keys(mnist_pngs)


# bad inputs ------------------------------------------------------------------


def test_empty_image_folder_is_an_error(trained_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = tok_cli(capsys, "encode", empty, "--out", tmp_path / "out", "--run", trained_run)
    assert code != 0
    one_error(err, str(empty), "no PNG/JPEG images")
    assert not (tmp_path / "out").exists()


def test_unreadable_files_are_skipped_with_one_warning(trained_run, mnist_pngs, tmp_path, capsys):
    src = tmp_path / "src"
    good = small_folder(mnist_pngs, src / "good", 30)
    data = good[0].read_bytes()
    (src / "bad").mkdir()
    (src / "bad" / "truncated.png").write_bytes(data[: len(data) // 2])
    (src / "notes.txt").write_text("not an image\n")
    out = tmp_path / "tokens"

    code, stdout, err = tok_cli(
        capsys,
        "encode",
        src,
        "--out",
        out,
        "--run",
        trained_run,
        "--shard-size",
        "8",
        "--no-progress",
    )
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tok: warning: skipped 2 file(s)")
    assert "bad/truncated.png" in lines[0] and "notes.txt" in lines[0]
    assert "wrote 30 rows" in stdout

    tf = load_tokens(out)
    assert tf.keys == [f"good/d{i:03d}" for i in range(30)]
    assert tf.tokens.shape == (30, 7, 7, 1)
    assert json.loads((out / "manifest.json").read_text())["num_items"] == 30
    # and the skipped files are still there, untouched
    assert (src / "bad" / "truncated.png").read_bytes() == data[: len(data) // 2]


def test_a_folder_of_only_corrupt_files_is_an_error(trained_run, mnist_pngs, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    data = next(mnist_pngs.rglob("*.png")).read_bytes()
    (src / "a.png").write_bytes(data[:40])
    (src / "b.png").write_bytes(b"\x89PNG garbage")
    code, _, err = tok_cli(capsys, "encode", src, "--out", tmp_path / "out", "--run", trained_run)
    assert code != 0
    last_error(err, "none of the 2", str(src))
    assert not (tmp_path / "out").exists()


def test_mixed_image_sizes(trained_run, mnist_pngs, tmp_path, capsys):
    src = tmp_path / "src"
    small_folder(mnist_pngs, src, 5)
    write_png(torch.randint(0, 256, (1, 32, 40), dtype=torch.uint8), str(src / "big.png"))
    out = tmp_path / "tokens"

    code, _, err = tok_cli(capsys, "encode", src, "--out", out, "--run", trained_run)
    assert code != 0
    one_error(err, "big.png", "32x40", "28", "--resize")
    assert not out.exists()

    for policy in ("resize", "center-crop"):
        dest = tmp_path / policy
        code, stdout, err = tok_cli(
            capsys,
            "encode",
            src,
            "--out",
            dest,
            "--run",
            trained_run,
            "--resize",
            policy,
            "--no-progress",
        )
        assert code == 0, err
        assert "wrote 6 rows" in stdout
        tf = load_tokens(dest)
        assert "big" in tf.keys and tf.tokens.shape == (6, 7, 7, 1)


def _craft_token_file(src: Path, dst: Path, *, row: int, value: int) -> None:
    """Copy token file ``src`` to ``dst`` with one index changed (bypassing write_tokens' checks)."""
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        raw = f.get_tensor("tokens")
    raw[row, 3, 4, 0] = value
    save_file({"tokens": raw}, str(dst), metadata=meta)


def test_out_of_range_token_index_is_refused(encoded, trained_run, tmp_path, capsys):
    tokens, _ = encoded
    bad = tmp_path / "bad.safetensors"
    _craft_token_file(tokens / "00000.safetensors", bad, row=7, value=1234)
    assert load_file(str(bad))["tokens"].max() == 1234

    out = tmp_path / "decoded"
    code, _, err = tok_cli(capsys, "decode", bad, "--out", out, "--run", trained_run)
    assert code != 0
    one_error(err, str(bad), "1234", "out of range", "1000")
    assert not out.exists()


@pytest.fixture(scope="module")
def other_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run with slightly different weights (another sha256)."""
    other = tmp_path_factory.mktemp("other") / "run"
    shutil.copytree(trained_run, other)
    # clone: load_file maps the file, which is overwritten next
    state = {k: v.clone() for k, v in load_file(str(other / "model.safetensors")).items()}
    name = sorted(state)[0]
    state[name] = state[name] + 0.01
    save_file(state, str(other / "model.safetensors"))
    return other


def test_tokens_from_another_tokenizer_need_force(
    encoded, trained_run, other_run, tmp_path, capsys
):
    tokens, _ = encoded
    shard = tokens / "00000.safetensors"
    ours = hashlib.sha256((trained_run / "model.safetensors").read_bytes()).hexdigest()
    theirs = hashlib.sha256((other_run / "model.safetensors").read_bytes()).hexdigest()
    assert ours != theirs

    out = tmp_path / "decoded"
    code, _, err = tok_cli(capsys, "decode", shard, "--out", out, "--run", other_run)
    assert code != 0
    one_error(err, "tokenizer", "sha256", ours[:12], theirs[:12], "--force")
    assert not out.exists()

    code, stdout, err = tok_cli(
        capsys, "decode", shard, "--out", out, "--run", other_run, "--force", "--no-progress"
    )
    assert code == 0, err
    assert "wrote 250 images" in stdout
    assert len(list(out.rglob("*.png"))) == 250


def test_encode_into_other_tokenizers_folder_is_refused(encoded, other_run, mnist_pngs, capsys):
    tokens, _ = encoded
    before = snapshot(tokens)
    code, _, err = tok_cli(
        capsys,
        "encode",
        mnist_pngs,
        "--out",
        tokens,
        "--run",
        other_run,
        "--shard-size",
        "250",
        "--no-progress",
    )
    assert code != 0
    one_error(err, str(tokens), "different tokenizer")
    assert snapshot(tokens) == before


def test_encode_refuses_an_out_folder_with_other_files(trained_run, mnist_pngs, tmp_path, capsys):
    src = tmp_path / "src"
    small_folder(mnist_pngs, src, 4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious\n")
    before = snapshot(out)
    code, _, err = tok_cli(
        capsys, "encode", src, "--out", out, "--run", trained_run, "--no-progress"
    )
    assert code != 0
    one_error(err, str(out), "mine.txt")
    assert snapshot(out) == before


def test_decode_refuses_an_out_folder_with_other_files(encoded, tmp_path, capsys):
    tokens, _ = encoded
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious\n")
    before = snapshot(out)
    code, _, err = tok_cli(
        capsys, "decode", tokens / "00001.safetensors", "--out", out, "--no-progress"
    )
    assert code != 0
    one_error(err, str(out), "not empty")
    assert snapshot(out) == before


def test_missing_run_folder(encoded, mnist_pngs, tmp_path, capsys):
    tokens, _ = encoded
    missing = tmp_path / "no-such-run"
    code, _, err = tok_cli(capsys, "encode", mnist_pngs, "--out", tmp_path / "o1", "--run", missing)
    assert code != 0
    one_error(err, str(missing))
    code, _, err = tok_cli(capsys, "decode", tokens, "--out", tmp_path / "o2", "--run", missing)
    assert code != 0
    one_error(err, str(missing))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("src", ["zz:test", "no/such/folder", "mnsit:test"])
def test_unknown_source(trained_run, tmp_path, capsys, src):
    code, _, err = tok_cli(capsys, "encode", src, "--out", tmp_path / "out", "--run", trained_run)
    assert code != 0
    one_error(err, src, "mnist")  # names the source and lists the datasets
    assert not (tmp_path / "out").exists()


def test_dataset_that_needs_options_is_a_clean_error(trained_run, tmp_path, capsys):
    # imagefolder needs a path: naming it as DATASET:SPLIT used to crash with a TypeError
    code, _, err = tok_cli(
        capsys, "encode", "imagefolder:test", "--out", tmp_path / "out", "--run", trained_run
    )
    assert code != 0
    one_error(err, "imagefolder", "path")


def test_unknown_split_of_a_dataset(trained_run, tmp_path, capsys):
    code, _, err = tok_cli(
        capsys, "encode", "mnist:bogus", "--out", tmp_path / "out", "--run", trained_run
    )
    assert code != 0
    one_error(err, "bogus", "train", "test")


def test_decode_of_a_missing_token_file(tmp_path, capsys):
    missing = tmp_path / "nothing.safetensors"
    code, _, err = tok_cli(capsys, "decode", missing, "--out", tmp_path / "out")
    assert code != 0
    one_error(err, str(missing))


def test_errors_through_a_real_subprocess(trained_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = tok_subprocess("encode", empty, "--out", tmp_path / "out", "--run", trained_run)
    assert proc.returncode != 0
    one_error(proc.stderr, str(empty))
    assert proc.stdout == ""


# decode once, walk once; the run it uses; --limit; sources from plugins; torchrun -----------


def test_each_source_file_is_decoded_once_and_the_folder_walked_once(
    trained_run, mnist_pngs, tmp_path, capsys, monkeypatch
):
    import tok.data.folder as folder_module

    decoded: dict[str, int] = {}
    walks: list[str] = []
    read_image, scandir = folder_module.read_image, folder_module.os.scandir

    def counting_read(path, **kwargs):
        decoded[str(path)] = decoded.get(str(path), 0) + 1
        return read_image(path, **kwargs)

    def counting_scandir(path):
        if str(path) == str(src):  # the top of a walk (walk_files lists folders with scandir)
            walks.append(str(path))
        return scandir(path)

    src = tmp_path / "src"
    small_folder(mnist_pngs, src, 40)
    (src / "notes.txt").write_text("not an image")
    pngs = sorted(str(p) for p in src.glob("*.png"))  # before scandir is counted
    monkeypatch.setattr(folder_module, "read_image", counting_read)
    monkeypatch.setattr(folder_module.os, "scandir", counting_scandir)
    code, stdout, err = tok_cli(
        capsys, "encode", src, "--out", tmp_path / "t", "--tokenizer", trained_run,
        "--shard-size", "8", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "wrote 40 rows" in stdout
    assert sorted(decoded) == pngs
    assert set(decoded.values()) == {1}, "a source file was decoded more than once"
    assert walks == [str(src)], f"the source folder was walked {len(walks)} times"


def _copy_run(run: Path, dest: Path, *, mtime: float) -> Path:
    shutil.copytree(run, dest)
    os.utime(dest / "model.safetensors", (mtime, mtime))
    return dest


def test_encode_without_a_tokenizer_uses_the_newest_complete_run(
    trained_run, mnist_pngs, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "images"
    small_folder(mnist_pngs, src, 12)
    code, out, err = tok_cli(capsys, "encode", src, "--out", "t0")
    assert code == 1 and out == ""
    one_error(err, "no --tokenizer given", "image", "tok train fsq_mnist")

    now = time.time()
    _copy_run(trained_run, tmp_path / "runs" / "older", mtime=now - 300)
    _copy_run(trained_run, tmp_path / "runs" / "newer", mtime=now - 200)
    unfinished = _copy_run(trained_run, tmp_path / "runs" / "unfinished", mtime=now - 100)
    (unfinished / "state.json").write_text(json.dumps({"step": 3, "elapsed_seconds": 1.0}))
    video = _copy_run(trained_run, tmp_path / "runs" / "video", mtime=now)
    config = json.loads((video / "tokenizer.json").read_text())
    config["input_shape"] = [1, 5, 28, 28]
    (video / "tokenizer.json").write_text(json.dumps(config))

    code, out, err = tok_cli(capsys, "encode", src, "--out", "t1", "--no-progress")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"tokenizer: {Path('runs') / 'newer'} ")
    assert load_tokens(tmp_path / "t1").header.tokenizer_path == str(
        (tmp_path / "runs" / "newer").resolve()
    )


def test_limit_encodes_the_first_items(trained_run, tmp_path, capsys):
    code, out, err = tok_cli(
        capsys, "encode", "mnist:test", "--out", tmp_path / "t", "--tokenizer", trained_run,
        "--limit", "30", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert load_tokens(tmp_path / "t").keys == [f"mnist/test/{i:05d}" for i in range(30)]
    code, _, err = tok_cli(
        capsys, "encode", "mnist:test", "--out", tmp_path / "u", "--tokenizer", trained_run,
        "--limit", "-1",
    )  # fmt: skip
    assert code == 1
    one_error(err, "--limit")


def test_a_dataset_plugin_opens_paths_by_its_file_extensions(trained_run, tmp_path, capsys):
    """A third-party dataset that declares ``source_extensions`` is a ``tok encode PATH``
    source like tok's own: here, a folder of .npy arrays."""
    import numpy as np

    from tok.data import Dataset
    from tok.registry import register_plugin, unregister_plugin

    class NpyFolder(Dataset):
        supplied_args = ("channels",)
        source_extensions = (".npy",)

        def __init__(self, *, path: str, channels: int = 1) -> None:
            self.path, self.channels = Path(path), channels

        def keys(self, split):
            self.check_split(split)
            return sorted(p.stem for p in self.path.glob("*.npy"))

        def read(self, split, keys):
            arrays = [np.load(self.path / f"{k}.npy", allow_pickle=False) for k in keys]
            from tok.data import Samples

            return Samples(images=torch.from_numpy(np.stack(arrays)), keys=list(keys))

        def input_shape(self):
            return (self.channels, 28, 28)

    class Plugin:
        @hookimpl
        def register_datasets(register):
            register(NpyFolder, name="npyfolder")

    digits = to_uint8(torch.rand(5, 1, 28, 28))
    src = tmp_path / "arrays"
    src.mkdir()
    for i, d in enumerate(digits):
        np.save(src / f"d{i}.npy", d.numpy())
    register_plugin(Plugin, name="npy-plugin")
    try:
        code, out, err = tok_cli(
            capsys,
            "encode",
            src,
            "--out",
            tmp_path / "t",
            "--tokenizer",
            trained_run,
            "--no-progress",
        )
    finally:
        unregister_plugin("npy-plugin")
    assert code == 0, err
    tf = load_tokens(tmp_path / "t")
    assert tf.keys == [f"d{i}" for i in range(5)]
    assert torch.equal(tf.tokens, Tokenizer.load(trained_run).encode(digits.float() / 255))


def test_the_readme_commands_work_as_typed_under_torchrun(trained_run, mnist_pngs, tmp_path):
    """torchrun reads options it knows before the module's own; tok's option names are no
    abbreviation of any of its (its --run-path made `--run` ambiguous: --tokenizer)."""
    out = tmp_path / "t"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--standalone",
            "-m", "tok", "encode", str(mnist_pngs), "--tokenizer", str(trained_run),
            "--out", str(out), "--limit", "20", "--no-progress",
        ],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote 20 rows" in proc.stdout
    assert len(load_tokens(out)) == 20


def test_a_codebook_too_large_for_token_files_is_refused_before_any_work(tmp_path, capsys):
    run = Tokenizer.from_config(
        {
            "architecture": {"name": "conv", "config": {"in_channels": 1, "channels": [8, 8, 8]}},
            "quantizer": {"name": "lfq", "config": {"bits": 32}},
            "input_shape": [1, 28, 28],
        }
    ).save(tmp_path / "run")
    code, out, err = tok_cli(
        capsys, "encode", "mnist:test", "--tokenizer", run, "--out", tmp_path / "t", "--no-progress"
    )
    assert code == 1 and out == ""
    one_error(err, "4294967296", "2**31")
    assert not (tmp_path / "t").exists()


def test_resuming_with_other_source_options_is_refused(trained_run, mnist_pngs, tmp_path, capsys):
    """The options that shape the inputs (--resize, --fps) are recorded; a folder is never
    finished with rows read another way."""
    src = tmp_path / "src"
    small_folder(mnist_pngs, src, 5)
    write_png(torch.randint(0, 256, (1, 32, 40), dtype=torch.uint8), str(src / "big.png"))
    out = tmp_path / "tokens"
    base = ["encode", src, "--out", out, "--tokenizer", trained_run, "--no-progress"]
    code, _, err = tok_cli(capsys, *base, "--resize", "resize")
    assert code == 0, err
    assert load_tokens(out).header.source_options == {"resize": "resize", "fps": None}
    before = snapshot(out)
    code, _, err = tok_cli(capsys, *base, "--resize", "center-crop")
    assert code == 1
    one_error(err, "encoded with --resize resize, not --resize center-crop")
    assert snapshot(out) == before


def test_rows_that_would_share_a_file_are_refused_before_decoding(encoded, tmp_path, capsys):
    tokens, _ = encoded
    tf = read_tokens(tokens / "00000.safetensors")
    keys = list(tf.keys)
    keys[1] = keys[0].replace("/", "/./", 1)  # another spelling of the same path
    from tok.tokens import write_tokens

    bad = write_tokens(tmp_path / "dup.safetensors", tf.tokens, keys=keys, header=tf.header)
    code, _, err = tok_cli(capsys, "decode", bad, "--out", tmp_path / "out")
    assert code == 1
    one_error(err, repr(keys[0]), repr(keys[1]))
    assert not (tmp_path / "out").exists()


# latents: a continuous tokenizer (a VAE) --------------------------------------
# `tok encode` with the tiny vae_mnist run writes latent files (the posterior means, float,
# kind "latents", format tok.tokens/3) in the same folders, with the same provenance, resume
# and checks; `tok decode` reads them back.

LATENT_ROWS = 40  # one shard and one forward batch: encode and decode see the same batch


@pytest.fixture(scope="module")
def vae_latents(trained_vae: Path, mnist_pngs: Path, tmp_path_factory: pytest.TempPathFactory):
    """40 digits encoded by the tiny VAE with ``cli.main`` (float32 latents, one shard),
    decoded back to PNGs; returns the source folder, the latent folder and the PNGs."""
    work = tmp_path_factory.mktemp("latents")
    src, latents, decoded = work / "src", work / "latents", work / "decoded"
    small_folder(mnist_pngs, src, LATENT_ROWS)
    args = ["encode", str(src), "--out", str(latents), "--tokenizer", str(trained_vae)]
    assert cli.main([*args, "--no-progress"]) == 0
    assert cli.main(["decode", str(latents), "--out", str(decoded), "--no-progress"]) == 0
    return src, latents, decoded


def test_latent_files_decode_exactly_as_the_tokenizer_decodes_its_latents(vae_latents, trained_vae):
    src, latents, decoded = vae_latents
    keys = png_keys(src)
    assert len(keys) == LATENT_ROWS and png_keys(decoded) == keys
    x = read_pngs(src, keys).float() / 255
    tokenizer = Tokenizer.load(trained_vae)
    assert tokenizer.continuous

    # the files hold the tokenizer's own latent means of those images, float32, exactly
    tf = load_tokens(latents)
    assert tf.kind == "latents" and tf.keys == keys
    assert tf.tokens.dtype == torch.float32 and tf.tokens.shape == (LATENT_ROWS, 1, 20)
    assert torch.equal(tf.tokens, tokenizer.encode(x))

    # and tok decode's PNGs are tokenizer.decode(tokenizer.encode(x)), pixel for pixel
    got = read_pngs(decoded, keys)
    want = to_uint8(tokenizer.decode(tokenizer.encode(x)))
    assert got.dtype == torch.uint8 and got.shape == (LATENT_ROWS, 1, 28, 28)
    assert torch.equal(got, want), f"{int((got != want).sum())} pixels differ"
    assert not torch.equal(got, read_pngs(src, keys))  # 20 training steps: not the sources


def test_latent_files_carry_the_header_and_provenance_of_token_files(vae_latents, trained_vae):
    src, latents, _ = vae_latents
    sha = hashlib.sha256((trained_vae / "model.safetensors").read_bytes()).hexdigest()
    tokenizer = Tokenizer.load(trained_vae)
    assert sorted(p.name for p in latents.iterdir()) == ["00000.safetensors", "manifest.json"]
    with safe_open(str(latents / "00000.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["latents"]
        raw = f.get_tensor("latents")
    assert raw.dtype == torch.float32 and raw.shape == (LATENT_ROWS, 1, 20)
    assert meta["format"] == "tok.tokens/3" and meta["kind"] == "latents"
    assert meta["dtype"] == "float32" and json.loads(meta["latent_dim"]) == 20
    assert meta["bottleneck"] == "gaussian"
    assert json.loads(meta["bottleneck_config"]) == tokenizer.bottleneck.config()
    assert json.loads(meta["grid"]) == [1]
    assert meta["tokenizer_sha256"] == sha
    assert json.loads(meta["tokenizer_config"]) == json.loads(json.dumps(tokenizer.config()))
    assert meta["tokenizer_path"] == str(trained_vae.resolve())
    assert meta["source"] == str(src)
    assert json.loads(meta["source_options"]) == {"resize": "error", "fps": None}
    plugins = json.loads(meta["plugins"])
    assert plugins["bottleneck"]["plugin"] == "gaussian"
    assert plugins["bottleneck"]["distribution"] == "tok-vision"
    assert plugins["architecture"]["plugin"] == "mlp"
    assert json.loads(meta["keys"]) == png_keys(src)
    assert not {"quantizer", "quantizer_config", "codebook_sizes"} & set(meta)

    manifest = json.loads((latents / "manifest.json").read_text())
    assert manifest["format"] == "tok.manifest/3" and manifest["complete"] is True
    assert manifest["num_items"] == LATENT_ROWS
    header = manifest["header"]
    assert header["kind"] == "latents" and header["dtype"] == "float32"
    assert (header["bottleneck"], header["latent_dim"], header["grid"]) == ("gaussian", 20, [1])
    assert header["tokenizer_sha256"] == sha


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_latent_dtype_is_stored_as_named_and_decoded_from(
    trained_vae, mnist_pngs, tmp_path, capsys, dtype
):
    src, out, decoded = tmp_path / "src", tmp_path / "latents", tmp_path / "decoded"
    small_folder(mnist_pngs, src, 12)
    code, stdout, err = tok_cli(capsys, "encode", src, "--out", out, "--tokenizer", trained_vae,
                                "--latent-dtype", dtype, "--no-progress")  # fmt: skip
    assert code == 0, err
    assert stdout.strip() == f"wrote 12 rows of latents 1x20 ({dtype}) in 1 shard(s) to {out}"
    with safe_open(str(out / "00000.safetensors"), framework="pt") as f:
        assert f.metadata()["dtype"] == dtype
        assert f.get_tensor("latents").dtype == getattr(torch, dtype)
    tokenizer = Tokenizer.load(trained_vae)
    keys = png_keys(src)
    x = read_pngs(src, keys).float() / 255
    stored = tokenizer.encode(x).to(getattr(torch, dtype)).float()
    tf = load_tokens(out)
    assert tf.header.dtype == dtype and tf.tokens.dtype == torch.float32
    assert torch.equal(tf.tokens, stored)

    code, stdout, err = tok_cli(capsys, "decode", out, "--out", decoded, "--no-progress")
    assert code == 0, err
    assert stdout.strip() == f"wrote 12 images to {decoded}"
    assert torch.equal(read_pngs(decoded, keys), to_uint8(tokenizer.decode(stored)))


def test_decode_refuses_latents_with_a_discrete_tokenizer_and_tokens_with_a_continuous_one(
    vae_latents, trained_vae, trained_run, mnist_pngs, tmp_path, capsys
):
    _, latents, _ = vae_latents
    out = tmp_path / "decoded"
    for force in ([], ["--force"]):  # --force bridges other weights, never another kind
        code, _, err = tok_cli(capsys, "decode", latents, "--out", out, "--tokenizer",
                               trained_run, *force)  # fmt: skip
        assert code == 1
        one_error(err, str(latents), "holds latents (float32, continuous bottleneck 'gaussian')",
                  f"the tokenizer in {trained_run} is discrete (quantizer 'fsq')",
                  "decodes tokens only")  # fmt: skip
        assert not out.exists()

    src, tokens = tmp_path / "src", tmp_path / "tokens"
    small_folder(mnist_pngs, src, 3)
    code, _, err = tok_cli(capsys, "encode", src, "--out", tokens, "--tokenizer", trained_run,
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    for force in ([], ["--force"]):
        code, _, err = tok_cli(capsys, "decode", tokens, "--out", out, "--tokenizer",
                               trained_vae, *force)  # fmt: skip
        assert code == 1
        one_error(err, str(tokens), "holds tokens (quantizer 'fsq')",
                  f"the tokenizer in {trained_vae} is continuous (bottleneck 'gaussian')",
                  "decodes latents only")  # fmt: skip
        assert not out.exists()


def _wild_vae(run: Path, dest: Path, *, bias: float, weight: float) -> Path:
    """A copy of the VAE ``run`` whose mean head gives ``bias + weight * sum(z)`` (finite
    weights: it saves and loads like any tokenizer)."""
    tokenizer = Tokenizer.load(run)
    means = slice(0, tokenizer.bottleneck.latent_dim)  # the first half of [mean, log-variance]
    with torch.no_grad():
        tokenizer.bottleneck.to_moments.weight[means].fill_(weight)
        tokenizer.bottleneck.to_moments.bias[means].fill_(bias)
    return tokenizer.save(dest)


def test_non_finite_latents_are_refused_in_one_line_and_never_written(
    trained_vae, mnist_pngs, tmp_path, capsys
):
    src = tmp_path / "src"
    small_folder(mnist_pngs, src, 4)
    # means beyond float32 (3e38 + 1e36 * sum(z), z >= 0 after the encoder's ReLU): inf
    wild = _wild_vae(trained_vae, tmp_path / "wild", bias=3e38, weight=1e36)
    out = tmp_path / "latents"
    code, _, err = tok_cli(capsys, "encode", src, "--out", out, "--tokenizer", wild,
                           "--no-progress")  # fmt: skip
    assert code == 1
    one_error(err, "latent value(s) are not finite", "in float32, the first in row 'd000'",
              "tok never stores non-finite latents")  # fmt: skip
    assert not list(out.glob("*.safetensors"))

    # means of 1e5: finite in float32, beyond float16
    big = _wild_vae(trained_vae, tmp_path / "big", bias=1e5, weight=0.0)
    out = tmp_path / "half"
    code, _, err = tok_cli(capsys, "encode", src, "--out", out, "--tokenizer", big,
                           "--latent-dtype", "float16", "--no-progress")  # fmt: skip
    assert code == 1
    one_error(err, "80 latent value(s) are not finite (0 NaN, 80 ±inf) in float16",
              "beyond float16's range", "store them as float32")  # fmt: skip
    assert not list(out.glob("*.safetensors"))
    code, _, err = tok_cli(capsys, "encode", src, "--out", tmp_path / "full", "--tokenizer", big,
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    assert bool((load_tokens(tmp_path / "full").tokens == 1e5).all())


def test_an_interrupted_latent_encode_resumes_without_redoing_shards(
    trained_vae, mnist_pngs, tmp_path, capsys
):
    """A run killed after shards 0 and 1 were recorded, with shard 2's file written but not
    recorded and shard 3 half-written: the rerun keeps 0 and 1, adopts 2, writes 3 — the
    same bytes as an encode never interrupted."""
    src = tmp_path / "src"
    small_folder(mnist_pngs, src, 40)
    args = ["--tokenizer", trained_vae, "--shard-size", "10", "--no-progress"]
    code, _, err = tok_cli(capsys, "encode", src, "--out", tmp_path / "straight", *args)
    assert code == 0, err
    out = tmp_path / "latents"
    code, _, err = tok_cli(capsys, "encode", src, "--out", out, *args)
    assert code == 0, err

    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"][2:]:
        shard.update(done=False, count=None)
    manifest.update(num_items=20, keys_sha256=None, complete=False)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "00003.safetensors").rename(out / ".tmp-00003.safetensors.killed")
    old = 1_000_000_000
    for name in ("00000.safetensors", "00001.safetensors"):
        os.utime(out / name, ns=(old, old))

    code, stdout, err = tok_cli(capsys, "encode", src, "--out", out, *args)
    assert code == 0, err
    assert stdout.strip() == (
        f"wrote 40 rows of latents 1x20 (float32) in 4 shard(s) to {out} "
        "(3 shard(s) were already done)"
    )
    assert [(out / f"0000{i}.safetensors").stat().st_mtime_ns for i in (0, 1)] == [old, old]
    assert not list(out.glob(".tmp-*"))
    straight = {p.name: p.read_bytes() for p in (tmp_path / "straight").iterdir()}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == straight

    # finishing it in another dtype would mix two: refused, nothing changed
    before = snapshot(out)
    code, _, err = tok_cli(capsys, "encode", src, "--out", out, *args, "--latent-dtype", "float16")
    assert code == 1
    one_error(
        err, f"cannot resume {out}", "it holds latents 1x20 float32, not latents 1x20 float16"
    )
    assert snapshot(out) == before


def test_latent_dtype_with_a_discrete_tokenizer_is_refused_before_any_work(
    trained_run, tmp_path, capsys
):
    out = tmp_path / "t"
    code, stdout, err = tok_cli(capsys, "encode", "mnist:test", "--tokenizer", trained_run,
                                "--out", out, "--latent-dtype", "float16")  # fmt: skip
    assert code == 1 and stdout == ""
    one_error(err, "--latent-dtype applies to continuous tokenizers only", "'fsq'")
    assert not out.exists()
