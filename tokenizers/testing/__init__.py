"""Conformance checks for plugins: :func:`check_quantizer`, :func:`check_bottleneck`,
:func:`check_architecture` and :func:`check_dataset`.

Each one checks every promise of one plugin contract (``docs/plugins.md``)
and raises ``AssertionError`` naming the plugin and the broken promise, so it
reads well in a pytest report. tok's own tests run them over every
registered quantizer, architecture and dataset; use them in a plugin's own
tests::

    import pytest
    from tok.testing import check_architecture, check_dataset, check_quantizer
    from my_plugin import MyQuantizer

    def test_my_quantizer_conforms():
        check_quantizer(MyQuantizer)  # built from MyQuantizer.example_config()

    # or, once the plugin is installed, by registered name:
    @pytest.mark.parametrize("name", ["mine"])
    def test_registered(name):
        check_quantizer(name, config={"dim": 16, "codebook_size": 64})

    def test_my_architecture_conforms():
        check_architecture("my-conv")  # example_config() on example_input_shape()

    def test_my_dataset_conforms(tmp_path):
        check_dataset("my-images", config={"path": str(make_some_images(tmp_path))})

Every check runs with its own random seed inside ``torch.random.fork_rng``
and leaves the caller's random state as it was.
"""

from __future__ import annotations

from .architecture import check_architecture
from .bottleneck import check_bottleneck
from .dataset import check_dataset
from .quantizer import check_quantizer

__all__ = ["check_architecture", "check_bottleneck", "check_dataset", "check_quantizer"]
