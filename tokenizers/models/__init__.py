"""Tokenizer architectures and the :class:`Tokenizer` (encoder → quantizer → decoder)."""

from .base import Architecture
from .tokenizer import Tokenizer, TokenizerOutput

__all__ = ["Architecture", "Tokenizer", "TokenizerOutput"]
