"""tok.models.Tokenizer: save/load, fingerprints, damaged folders, no pickle."""

from __future__ import annotations

import hashlib
import json
import pickle
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
    assert tokenizer.quantizer_name == "fsq" and tokenizer.architecture_name == "conv"
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
    config["architecture"]["config"]["channels"] = [16, 64, 128]
    (run_copy / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        Tokenizer.load(run_copy)
    assert "model.safetensors" in str(info.value) and "size mismatch" in str(info.value)


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


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(run_copy, tmp_path, how):
    marker = tmp_path / "pwned"
    weights = run_copy / "model.safetensors"
    # clone: load_file maps the file, which is overwritten next
    payload = {"state": _Boom(marker), **{k: v.clone() for k, v in load_file(str(weights)).items()}}
    if how == "pickle":
        weights.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, weights)
    with pytest.raises(CheckpointError, match=str(weights)):
        Tokenizer.load(run_copy)
    assert not marker.exists()
