"""Tests of the example plugin, using tok's conformance suite.

``check_quantizer`` runs every promise of the Quantizer contract (shapes,
dtypes, gradients, exact ``indices_to_codes``, config and safetensors round
trips, eval determinism, out-of-range indices). Call it by registered name to
also prove the entry point works, or with the class while developing.
"""

from __future__ import annotations

import pytest
import tok
import torch
from tok.errors import ConfigError
from tok.testing import check_quantizer

from tok_plugin_example import BinaryQuantizer


def test_registered_quantizer_conforms():
    # uses BinaryQuantizer.example_config(): three 2-bit streams
    check_quantizer("example-binary")


@pytest.mark.parametrize("config", [{"dim": 4, "bits": 4}, {"dim": 3, "bits": 1}])
def test_other_configs_conform(config):
    check_quantizer(BinaryQuantizer, config=config)


def test_registered_by_the_plugin():
    assert tok.get_quantizer("example-binary") is BinaryQuantizer
    assert tok.get_quantizer("example-sign") is BinaryQuantizer
    info = next(p for p in tok.list_plugins() if p.name == "example")
    assert info.status == "ok"
    assert info.provides == {"quantizers": ["example-binary"]}


def test_codes_are_signs_and_indices_binary_numbers():
    q = BinaryQuantizer(dim=4, bits=2)
    z = torch.tensor([[[0.3, -2.0, -0.1, 0.0]]])
    out = q(z)
    assert out.quantized.tolist() == [[[1.0, -1.0, -1.0, 1.0]]]
    # stream 0: bits (1, 0) -> 1; stream 1: bits (0, 1) -> 2
    assert out.indices.tolist() == [[[1, 2]]]
    assert q.codebook_sizes == (4, 4)


def test_dim_must_be_divisible_by_bits():
    with pytest.raises(ConfigError, match="not divisible"):
        BinaryQuantizer(dim=6, bits=4)
