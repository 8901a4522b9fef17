"""Helpers the tok.tokens tests share: headers, random tokens and files as tok 0.1 wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tok.tokens import LatentHeader, TokenHeader, keys_sha256, token_dtype

SHA = "a" * 64
OTHER_SHA = "b" * 64
PLUGINS = {
    "architecture": {"plugin": "conv", "distribution": "tok-vision", "version": "0.1.0"},
    "quantizer": {"plugin": "fsq", "distribution": "tok-vision", "version": "0.1.0"},
}


def make_header(
    codebook_sizes=(16,), grid=(7, 7), sha=SHA, *, full: bool = False, plugins=None
) -> TokenHeader:
    extra = {}
    if full:
        extra = {
            "tokenizer_config": {"arch": "conv", "dim": 4, "channels": [32, 64]},
            "tokenizer_path": "/runs/mnist/tokenizer.safetensors",
            "source": "mnist:test",
        }
    return TokenHeader(
        quantizer="fsq",
        quantizer_config={"levels": [8, 5, 5], "note": "ü"},
        codebook_sizes=tuple(codebook_sizes),
        grid=tuple(grid),
        tokenizer_sha256=sha,
        plugins=plugins,
        **extra,
    )


def make_latent_header(
    latent_dim: int = 20, grid=(1,), sha=SHA, *, dtype: str = "float32", full: bool = False
) -> LatentHeader:
    extra = {}
    if full:
        extra = {
            "tokenizer_config": {"arch": "mlp", "bottleneck": "gaussian"},
            "tokenizer_path": "/runs/vae_mnist",
            "source": "mnist:test",
            "plugins": {
                "architecture": {"plugin": "mlp", "distribution": "tok-vision", "version": "0.1.0"},
                "bottleneck": {
                    "plugin": "gaussian",
                    "distribution": "tok-vision",
                    "version": "0.1.0",
                },
            },
            "source_options": {"resize": "error", "fps": None},
        }
    return LatentHeader(
        bottleneck="gaussian",
        bottleneck_config={"dim": 400, "latent_dim": latent_dim, "beta": 1.0},
        latent_dim=latent_dim,
        grid=tuple(grid),
        tokenizer_sha256=sha,
        dtype=dtype,
        **extra,
    )


def random_latents(n: int, header: LatentHeader, seed: int = 0) -> torch.Tensor:
    """float32 ``(n, *grid, l)`` posterior means of a plausible size (a few units)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *header.row_shape), generator=g) * 3


def random_tokens(n: int, header: TokenHeader, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    streams = [
        torch.randint(0, k, (n, *header.grid, 1), generator=g) for k in header.codebook_sizes
    ]
    return torch.cat(streams, dim=-1)


# --------------------------------------------------------------------------- format 1


def write_v1_tokens(path: Path, tokens: torch.Tensor, *, keys: list[str], header: TokenHeader):
    """Write a token file exactly as tok wrote ``tok.tokens/1`` (no ``plugins`` field)."""
    assert header.plugins is None
    meta = {"format": "tok.tokens/1"}
    for name, value in header.to_dict().items():
        if name in ("quantizer_config", "codebook_sizes", "grid", "tokenizer_config"):
            meta[name] = json.dumps(value, sort_keys=True)
        else:
            meta[name] = str(value)
    meta["keys"] = json.dumps(keys, ensure_ascii=False)
    stored = tokens.to(token_dtype(header.codebook_sizes)).contiguous()
    save_file({"tokens": stored}, str(path), metadata=meta)


def write_v1_folder(
    out: Path,
    tokens: torch.Tensor,
    *,
    keys: list[str],
    header: TokenHeader,
    shard_size: int,
    done: set[int],
) -> dict:
    """A token folder as tok wrote it with a ``tok.tokens/1`` manifest; returns the manifest."""
    out.mkdir(parents=True)
    shards = []
    for i, start in enumerate(range(0, len(keys), shard_size)):
        shard_keys = keys[start : start + shard_size]
        name = f"{i:05d}.safetensors"
        if i in done:
            write_v1_tokens(
                out / name, tokens[start : start + shard_size], keys=shard_keys, header=header
            )
        shards.append({"file": name, "count": len(shard_keys), "done": i in done})
    manifest = {
        "format": "tok.tokens/1",
        "header": header.to_dict(),
        "num_items": len(keys),
        "shard_size": shard_size,
        "keys_sha256": keys_sha256(keys),
        "shards": shards,
        "complete": all(s["done"] for s in shards),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
