"""How a token file stores its rows' keys: as JSON in its safetensors header.

A key is a path as Python reads it from the file system (``os.fsdecode``), so
names that are not UTF-8 are held as PEP 383 surrogates; :func:`keys_json`
writes them as ``\\udcXX`` escapes. Every key takes room in the header, which
safetensors caps at :data:`MAX_HEADER_BYTES`; :func:`key_header_bytes` and
:func:`metadata_bytes` measure it (docs/token-format.md).
"""

from __future__ import annotations

import hashlib
import json
import re

__all__ = ["MAX_HEADER_BYTES", "keys_json", "keys_sha256", "key_header_bytes", "metadata_bytes"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def keys_json(keys: list[str]) -> str:
    """``keys`` as a JSON list, valid UTF-8 whatever the names.

    A key is a path as Python reads it from the file system (:func:`os.fsdecode`):
    bytes that are not UTF-8 become lone surrogates ``U+DC80``–``U+DCFF`` (PEP 383).
    Those are written as ``\\udcXX`` escapes, which ``json.loads`` turns back into the
    same surrogates and :func:`os.fsencode` into the same bytes; every other
    character is written as itself (``ensure_ascii=False``).
    """
    text = json.dumps(list(keys), ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


#: the largest header a safetensors file may have (the library refuses to write or read
#: more; ``MAX_HEADER_SIZE`` in safetensors' Rust core), in bytes
MAX_HEADER_BYTES = 100_000_000
#: room kept in a header for the tensor's entry and the padding safetensors adds
_HEADER_SLACK = 1_000


def metadata_bytes(meta: dict[str, str]) -> int:
    """The size of a safetensors header holding ``meta`` and one tensor (an upper bound
    within a few hundred bytes): what :data:`MAX_HEADER_BYTES` limits."""
    return len(json.dumps(meta, ensure_ascii=False).encode()) + _HEADER_SLACK


def key_header_bytes(keys: list[str]) -> list[int]:
    """What each key adds to a token file's safetensors header, in bytes: its JSON in the
    ``keys`` list (:func:`keys_json`), escaped once more as a string of the header's JSON,
    plus the separator."""
    return [len(json.dumps(keys_json([k])[1:-1], ensure_ascii=False).encode()) for k in keys]


def keys_sha256(keys: list[str]) -> str:
    """Return the sha256 (hex) of a list of source keys, order included (of :func:`keys_json`)."""
    return hashlib.sha256(keys_json(keys).encode("utf-8")).hexdigest()
