"""Token files and token folders: how tok stores discrete tokens (and a continuous
tokenizer's latents) on disk.

A **token file** (format ``tok.tokens/2``, :data:`FORMAT`; :mod:`tok.tokens.file`)
is one safetensors file (no pickle) holding

* one tensor ``tokens`` of shape ``(N, *grid, S)``: ``N`` rows (one per
  encoded image or clip; ``N`` may be 0), the latent ``grid`` (e.g. ``(7, 7)``
  or ``(T, H, W)``) and ``S`` streams, one per codebook. It is stored in the
  smallest integer dtype that holds the largest codebook (see
  :func:`token_dtype`: ``uint8`` for codebooks of at most 256 entries,
  ``int16`` up to 32768, ``int32`` up to 2**31 — larger codebooks cannot be
  stored) and always read back as ``int64``;
* string metadata (safetensors metadata is ``str -> str``; non-strings are
  JSON-encoded):

  ``format``            ``"tok.tokens/2"`` (``"tok.tokens/1"`` in older files)
  ``quantizer``         the quantizer's registered name
  ``quantizer_config``  its config (JSON object)
  ``codebook_sizes``    one size per stream (JSON list)
  ``grid``              the latent grid (JSON list)
  ``tokenizer_sha256``  sha256 of the tokenizer weights that made the tokens
  ``tokenizer_config``  optional: the full tokenizer config (JSON object)
  ``tokenizer_path``    optional: where the tokenizer lived (a hint only)
  ``source``            optional: what was encoded (a folder, ``"mnist:test"``)
  ``plugins``           optional, new in ``/2``: which plugin and distribution
                        provided the architecture and the quantizer (JSON object)
  ``keys``              the source key of every row, in order (JSON list)

A **latent file** (format ``tok.tokens/3``, :data:`LATENT_FORMAT`) is what a continuous
tokenizer (a VAE) writes in its place: the same layout and provenance fields, header
:class:`LatentHeader` with ``kind: "latents"``, one tensor ``latents``, float ``(N,
*grid, l)`` — the posterior means — stored in the dtype its ``dtype`` field names
(``float32``, ``float16`` or ``bfloat16``: :data:`LATENT_DTYPES`) and read back as
``float32``; ``bottleneck``, ``bottleneck_config`` and ``latent_dim`` replace
``quantizer``, ``quantizer_config`` and ``codebook_sizes``. Latents that are not finite
are never written. Their folders are token folders with a ``tok.manifest/3`` manifest
(:data:`LATENT_MANIFEST_FORMAT`). Token files and folders are still written as ``/2``,
byte for byte as before latent files existed.

A **token folder** (what ``tok encode SRC --out DIR`` writes;
:mod:`tok.tokens.folder`) holds shards ``00000.safetensors``,
``00001.safetensors``, … — each a token file with the keys of its rows — and
``manifest.json``, a :class:`Manifest` (format ``tok.manifest/2``;
:mod:`tok.tokens.manifest`)::

    {"format": "tok.manifest/2", "header": {...}, "shard_size": K,
     "planned_items": P, "planned_keys_sha256": "...",
     "shards": [{"file": "00000.safetensors", "planned": K, "count": K - 1,
                 "skipped": ["digits/7/00012"], "done": true}, ...],
     "num_items": N, "keys_sha256": "..." or null, "complete": false}

The keys are planned before encoding starts; a source item that turns out
unreadable while its shard is encoded is skipped, so a shard may hold fewer
rows than planned (a shard with every key skipped is a file of zero rows).
Manifests of ``tok.tokens/1`` (no planned counts, nothing skipped) still read.
Files or manifests of any other format are refused in one line naming it.

**Ragged rows** (format ``tok.tokens/4``, :data:`RAGGED_FORMAT`; manifest
``tok.manifest/4``): ``tok encode --resize keep`` encodes each image or clip at its own
size, so rows have grids of their own. Such a file's header says ``ragged: true``; its
rows tensor holds every row's positions one after another, ``(P, S)``, beside two int64
tensors ``grids`` (each row's grid) and ``sizes`` (each row's input size before padding,
what decoding crops back to). :class:`TokenFile` gives them as ``grids``/``sizes`` and
each row by :meth:`TokenFile.row`.

Every file is written under a temporary ``.tmp-*`` name and renamed into
place (:func:`tok._io.atomic_path`), so a reader never sees half a file. A
killed ``tok encode`` resumes: :meth:`TokenDir.open` keeps finished shards,
removes stale temporary files and lists only the shards still to do. tok
never writes into a folder holding files it did not make.

docs/token-format.md documents every field; docs/manifest.schema.json is the
manifest's JSON Schema.
"""

from __future__ import annotations

from .file import (
    FORMAT,
    LATENT_DTYPES,
    LATENT_FORMAT,
    RAGGED_FORMAT,
    READ_FORMATS,
    Header,
    LatentHeader,
    TokenFile,
    TokenHeader,
    header_for_tokenizer,
    header_from_dict,
    header_from_metadata,
    keys_json,
    keys_sha256,
    pack_rows,
    read_tokens,
    token_dtype,
    write_tokens,
)
from .folder import TokenDir, iter_token_dir, load_tokens, read_token_dir
from .manifest import (
    LATENT_MANIFEST_FORMAT,
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_READ_FORMATS,
    RAGGED_MANIFEST_FORMAT,
    Manifest,
    ShardEntry,
    check_shard_headers,
    plan_shards,
)

__all__ = [
    "check_shard_headers",
    "FORMAT",
    "Header",
    "header_for_tokenizer",
    "header_from_dict",
    "header_from_metadata",
    "iter_token_dir",
    "keys_json",
    "keys_sha256",
    "LATENT_DTYPES",
    "LATENT_FORMAT",
    "LATENT_MANIFEST_FORMAT",
    "LatentHeader",
    "load_tokens",
    "MANIFEST",
    "Manifest",
    "MANIFEST_FORMAT",
    "MANIFEST_READ_FORMATS",
    "pack_rows",
    "plan_shards",
    "RAGGED_FORMAT",
    "RAGGED_MANIFEST_FORMAT",
    "READ_FORMATS",
    "read_token_dir",
    "read_tokens",
    "ShardEntry",
    "token_dtype",
    "TokenDir",
    "TokenFile",
    "TokenHeader",
    "write_tokens",
]
