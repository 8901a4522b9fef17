"""Tokenizer architectures and the Tokenizer (encoder → quantizer → decoder)."""
