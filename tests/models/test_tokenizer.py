"""tok.models.Tokenizer: save/load, fingerprints, damaged folders, no pickle."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tok
from tok.errors import CheckpointError, TokError
from tok.models import Tokenizer
from tok.registry import registry

CONFIG = {
    "architecture": {
        "name": "conv",
        "config": {
            "in_channels": 1,
            "channels": [8, 16],
            "blocks": [0, 1],
            "latent_dim": 4,
            "norm": "none",
        },
    },
    "quantizer": {"name": "fsq", "config": {"levels": [8, 5, 5, 5]}},
    "input_shape": [1, 28, 28],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def test_save_load_round_trip_gives_identical_outputs(tmp_path, images):
    torch.manual_seed(1)
    tokenizer = Tokenizer.from_config(CONFIG).eval()
    folder = tokenizer.save(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "tokenizer.json"]
    loaded = Tokenizer.load(folder)
    assert not loaded.training
    assert loaded.config() == tokenizer.config()
    assert loaded.grid == tokenizer.grid == (14, 14)
    for (k1, v1), (k2, v2) in zip(
        tokenizer.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2), k1
    tokens = tokenizer.encode(images)
    assert tokens.shape == (6, 14, 14, 1) and tokens.dtype == torch.int64
    assert torch.equal(loaded.encode(images), tokens)
    assert torch.equal(loaded.decode(tokens), tokenizer.decode(tokens))
    assert torch.equal(loaded.reconstruct(images), tokenizer.reconstruct(images))
    # a fresh tokenizer is different, so the equality above is not trivial
    torch.manual_seed(2)
    assert not torch.equal(
        Tokenizer.from_config(CONFIG).eval().reconstruct(images), tokenizer.reconstruct(images)
    )


def test_trained_run_round_trip(trained_run, tmp_path, images):
    tokenizer = Tokenizer.load(trained_run)
    assert tokenizer.bottleneck_name == "fsq" and tokenizer.architecture_name == "conv"
    assert tokenizer.grid == (7, 7) and tokenizer.quantizer.codebook_sizes == (1000,)
    again = Tokenizer.load(tokenizer.save(tmp_path / "again"))
    assert torch.equal(again.reconstruct(images), tokenizer.reconstruct(images))
    assert torch.equal(again.encode(images), tokenizer.encode(images))
    # the weights file depends only on the weights: saving again gives the same bytes
    assert again.weights_sha256 == tokenizer.weights_sha256
    # a file path inside the folder works too
    assert (
        Tokenizer.load(trained_run / "model.safetensors").weights_sha256 == tokenizer.weights_sha256
    )


def test_weights_sha256_is_the_files_sha256(trained_run, tmp_path):
    tokenizer = Tokenizer.load(trained_run)
    assert tokenizer.weights_sha256 == sha256(trained_run / "model.safetensors")
    config = json.loads((trained_run / "tokenizer.json").read_text())
    assert config["weights_sha256"] == tokenizer.weights_sha256
    assert config["format"] == "tok.tokenizer/2"
    # which distribution provided each component, so a missing plugin can be named
    assert config["plugins"]["quantizer"] == {
        "plugin": "fsq",
        "distribution": "tok-vision",
        "version": tok.__version__,
    }
    assert config["plugins"]["architecture"]["plugin"] == "conv"

    fresh = Tokenizer.from_config(CONFIG)
    assert fresh.weights_sha256 is None
    fresh.save(tmp_path / "fresh")
    assert fresh.weights_sha256 == sha256(tmp_path / "fresh" / "model.safetensors")
    assert fresh.weights_sha256 != tokenizer.weights_sha256
    # weights only, no metadata: the sha names the weights and nothing else
    assert set(load_file(str(tmp_path / "fresh" / "model.safetensors"))) == set(fresh.state_dict())


@pytest.mark.parametrize("name", ["tokenizer.json", "model.safetensors"])
def test_missing_file_is_a_checkpoint_error_naming_it(run_copy, name):
    (run_copy / name).unlink()
    with pytest.raises(CheckpointError) as info:
        Tokenizer.load(run_copy)
    assert name in str(info.value) and str(run_copy) in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nope")):
        Tokenizer.load(tmp_path / "nope")


def test_corrupt_weights_are_a_checkpoint_error_naming_the_file(run_copy):
    weights = run_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=str(weights)):
        Tokenizer.load(run_copy)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(weights)):
        Tokenizer.load(run_copy)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"format": "other/1"}',
        '{"format": "tok.tokenizer/1", "quantizer": {}}',
    ],
)
def test_corrupt_config_is_a_checkpoint_error_naming_the_file(run_copy, text):
    (run_copy / "tokenizer.json").write_text(text)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.load(run_copy)


def test_weights_that_do_not_fit_the_config(run_copy):
    config = json.loads((run_copy / "tokenizer.json").read_text())
    config["architecture"]["config"]["channels"] = [16, 128]
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        Tokenizer.load(run_copy)
    message = str(info.value)
    assert "model.safetensors" in message and "size mismatch" not in message
    assert "architecture.config.channels is [16, 128] in tokenizer.json" in message
    assert "but [64, 128] in the weights" in message  # what the run was trained with


def test_unknown_component_in_the_config(run_copy):
    config = json.loads((run_copy / "tokenizer.json").read_text())
    config["quantizer"]["name"] = "fqs"
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(TokError) as info:
        Tokenizer.load(run_copy)
    assert "fqs" in str(info.value) and "tokenizer.json" in str(info.value)


def test_a_version_1_config_still_loads(run_copy, trained_run):
    config = json.loads((run_copy / "tokenizer.json").read_text())
    config["format"] = "tok.tokenizer/1"
    del config["plugins"]
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    loaded = Tokenizer.load(run_copy)
    assert loaded.weights_sha256 == Tokenizer.load(trained_run).weights_sha256
    config["format"] = "tok.tokenizer/9"
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tok.tokenizer/9"):
        Tokenizer.load(run_copy)


def test_a_component_whose_plugin_is_gone_names_its_distribution(run_copy):
    config = json.loads((run_copy / "tokenizer.json").read_text())
    config["quantizer"]["name"] = "bsq"
    config["plugins"]["quantizer"] = {
        "plugin": "bsq",
        "distribution": "tok-bsq",
        "version": "0.1.0",
    }
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        Tokenizer.load(run_copy)
    message = str(info.value)
    assert "quantizer 'bsq' comes from tok-bsq 0.1.0, which is not installed" in message
    assert "pip install 'tok-bsq==0.1.0'" in message and "damaged" not in message


def test_quantizer_dim_mismatch_is_a_tokerror(run_copy):
    arch = registry("architectures").get("conv")(in_channels=1, latent_dim=4)
    quantizer = registry("quantizers").get("fsq")(levels=[8, 5, 5, 5], dim=6)
    with pytest.raises(TokError) as info:
        Tokenizer(architecture=arch, quantizer=quantizer, input_shape=(1, 28, 28))
    assert "6" in str(info.value) and "latent_dim 4" in str(info.value)
    # the same through a tokenizer.json
    config = json.loads((run_copy / "tokenizer.json").read_text())
    config["quantizer"]["config"]["dim"] = 6
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(TokError, match="latent_dim 4"):
        Tokenizer.load(run_copy)


class _Boom:
    """Unpickling this object creates a marker file (as malicious code would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["bare pickle stream", "torch.save"])
def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(run_copy, tmp_path, how):
    """Both pickle layouts torch writes — the legacy one, a bare stream of pickles, and
    the zip archive — are refused before anything in them runs."""
    marker = tmp_path / "pwned"
    weights = run_copy / "model.safetensors"
    # clone: load_file maps the file, which is overwritten next
    payload = {"state": _Boom(marker), **{k: v.clone() for k, v in load_file(str(weights)).items()}}
    legacy = how == "bare pickle stream"
    torch.save(payload, weights, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=str(weights)):
        Tokenizer.load(run_copy)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Robustness: the fault kinds of non-finite values, dtypes and input sizes, for every
# registered architecture (its example config and input shape) under one FSQ.


def _example(name: str) -> tuple[Tokenizer, tuple[int, ...]]:
    cls = tok.get_architecture(name)
    shape = tuple(cls.example_input_shape())
    config = {
        "architecture": {"name": name, "config": cls.example_config()},
        "quantizer": {"name": "fsq", "config": {"levels": [5, 5, 5]}},
        "input_shape": list(shape),
    }
    torch.manual_seed(0)
    return Tokenizer.from_config(config).eval(), shape


@pytest.mark.parametrize("name", tok.list_architectures())
def test_nonfinite_input_is_refused_naming_how_many_and_where(name):
    tokenizer, shape = _example(name)
    x = torch.rand(2, *shape)
    x[1].view(-1)[5] = float("nan")
    x[1].view(-1)[9] = float("inf")
    for method in (tokenizer.encode, tokenizer.reconstruct):
        with pytest.raises(TokError) as info:
            method(x)
        message = str(info.value)
        assert "2 non-finite value(s) (1 NaN, 1 ±inf)" in message
        assert "item 1 at channel 0" in message


def test_nonfinite_latents_from_damaged_weights_are_refused(images):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_config(CONFIG).eval()
    with torch.no_grad():
        tokenizer.architecture.encoder[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TokError, match="non-finite latents for finite images"):
        tokenizer.encode(images)


def test_nonfinite_weights_are_never_saved_nor_loaded(tmp_path, images):
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_config(CONFIG).eval()
    good = tokenizer.save(tmp_path / "good")
    with torch.no_grad():
        tokenizer.architecture.decoder[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"architecture\.decoder\.0\.weight \(1 of "):
        tokenizer.save(tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.safetensors").exists()
    # a damaged file written by something else is refused on load, naming the tensor
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tokenizer.state_dict().items()}
    save_file(state, str(good / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"damaged: non-finite values in architecture"):
        Tokenizer.load(good)


@pytest.mark.parametrize("name", tok.list_architectures())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dtype_a_cast_tokenizer_encodes_and_decodes_in_float32(name, dtype):
    tokenizer, shape = _example(name)
    x = torch.rand(2, *shape)
    reference = tokenizer.encode(x)
    tokenizer = tokenizer.to(dtype)
    indices = tokenizer.encode(x)
    assert indices.shape == reference.shape and indices.dtype == torch.int64
    for out in (tokenizer.decode(indices), tokenizer.reconstruct(x)):
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert bool(torch.isfinite(out).all()) and 0 <= float(out.min()) <= float(out.max()) <= 1
    tokenizer.train()
    out = tokenizer(x)
    assert out.reconstruction.dtype == torch.float32
    out.reconstruction.sum().backward()


def _other_sizes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    sizes = [(shape[0] + 2, *shape[1:])]
    for axis in range(1, len(shape)):
        other = list(shape)
        other[axis] += 1
        sizes.append(tuple(other))
    return sizes


@pytest.mark.parametrize("name", tok.list_architectures())
def test_input_sizes_the_architecture_refuses_are_named(name):
    tokenizer, shape = _example(name)
    for other in _other_sizes(shape):
        size = "x".join(map(str, other))
        for method in (tokenizer.encode, tokenizer.reconstruct):
            with pytest.raises(TokError) as info:
                method(torch.rand(1, *other))
            message = str(info.value)
            assert f"cannot take {size} inputs" in message
            assert "x".join(map(str, shape)) in message  # what it was trained on
    with pytest.raises(TokError, match="takes float images in \\[0, 1\\], got torch.uint8"):
        tokenizer.encode(torch.zeros(1, *shape, dtype=torch.uint8))
    with pytest.raises(TokError, match="takes a batch"):
        tokenizer.encode(torch.rand(*shape))


def test_input_sizes_conv_takes_any_multiple_of_its_stride(images):
    """The reported case: built for 1x28x28 (7x7 grid with three stages), 30x30 and 29x27
    were accepted silently; now they are refused and 32x32 / 56x84 work."""
    torch.manual_seed(0)
    config = {**CONFIG, "architecture": {"name": "conv", "config": {"channels": [8, 16, 16]}}}
    tokenizer = Tokenizer.from_config(config).eval()
    for h, w in ((30, 30), (29, 27)):
        with pytest.raises(TokError, match=f"cannot take 1x{h}x{w} inputs.*multiples of 4"):
            tokenizer.encode(torch.rand(1, 1, h, w))
    with pytest.raises(TokError, match="built for 1-channel images.*got 3 channels"):
        tokenizer.encode(torch.rand(1, 3, 28, 28))
    assert tokenizer.encode(torch.rand(1, 1, 32, 32)).shape == (1, 8, 8, 1)
    assert tokenizer.encode(torch.rand(1, 1, 56, 84)).shape == (1, 14, 21, 1)


def test_weights_with_the_same_shapes_but_another_config_are_refused(run_copy):
    """FSQ levels [8, 5, 5, 4] instead of [8, 5, 5, 5]: every tensor has the same shape, so
    the weights loaded and encoded an 800-code codebook; the weights' record names it."""
    config = json.loads((run_copy / "tokenizer.json").read_text())
    config["quantizer"]["config"]["levels"] = [8, 5, 5, 4]
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"quantizer\.config\.levels is \[8, 5, 5, 4\]"):
        Tokenizer.load(run_copy)
