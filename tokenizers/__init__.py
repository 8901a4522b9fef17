"""tok: turn images and videos into discrete token streams (or continuous latents) and back."""

from __future__ import annotations

from .components import create_quantizer
from .convert import from_vector_quantize_pytorch
from .errors import TokError
from .hookspecs import hookimpl
from .quantizer import Quantizer, QuantizerOutput
from .registry import (
    get_architecture,
    get_dataset,
    get_loss,
    get_quantizer,
    list_architectures,
    list_datasets,
    list_losses,
    list_quantizers,
    register_plugin,
)
from .registry import plugins as list_plugins

# ``tok.plugins`` is the package of built-in plugins (``tok.plugins.fsq``…);
# importing it rebinds that attribute, so the function is ``tok.list_plugins``.

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "TokError",
    "hookimpl",
    "Quantizer",
    "QuantizerOutput",
    "create_quantizer",
    "from_vector_quantize_pytorch",
    "get_architecture",
    "get_dataset",
    "get_loss",
    "get_quantizer",
    "list_architectures",
    "list_datasets",
    "list_losses",
    "list_plugins",
    "list_quantizers",
    "register_plugin",
]
