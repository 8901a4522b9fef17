"""Token folders (tok.tokens.folder) and their manifest record (tok.tokens.manifest)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import jsonschema
import pytest
import torch

from tok.errors import (
    ConfigError,
    OutputDirError,
    TokenFileError,
    TokenizerMismatchError,
)
from tok.tokens import (
    LATENT_MANIFEST_FORMAT,
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_READ_FORMATS,
    RAGGED_MANIFEST_FORMAT,
    LatentHeader,
    Manifest,
    ShardEntry,
    TokenDir,
    TokenHeader,
    keys_sha256,
    load_tokens,
    read_token_dir,
    read_tokens,
    write_tokens,
)

from .helpers import (
    OTHER_SHA,
    PLUGINS,
    make_header,
    make_latent_header,
    random_latents,
    random_tokens,
    write_v1_folder,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"
KEYS = [f"k{i:02d}" for i in range(10)]  # shard_size 3 -> shards of 3, 3, 3, 1


def all_tokens(header: TokenHeader) -> torch.Tensor:
    return random_tokens(len(KEYS), header, seed=1)


def write_some(td: TokenDir, tokens: torch.Tensor, indices) -> None:
    for i in indices:
        start = i * td.shard_size
        td.write_shard(i, tokens[start : start + td.shard_size])


def rows(tokens: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """The rows of ``tokens`` (one per key of KEYS) for ``keys``."""
    return tokens[[KEYS.index(k) for k in keys]]


def read_manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_manifest_format_names():
    assert MANIFEST_FORMAT == "tok.manifest/2"
    assert LATENT_MANIFEST_FORMAT == "tok.manifest/3"
    assert MANIFEST_READ_FORMATS == (
        "tok.tokens/1",
        "tok.manifest/2",
        "tok.manifest/3",
        "tok.manifest/4",
    )


# --------------------------------------------------------------------------- writing


def test_token_dir_write_all_and_load(tmp_path, validator):
    header = make_header(codebook_sizes=(8, 300), grid=(2, 2), plugins=PLUGINS)
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td.pending()] == [0, 1, 2, 3]
    assert [k for _, ks in td.pending() for k in ks] == KEYS
    assert not td.complete
    # write out of order: the result is still in key order
    write_some(td, tokens, [3, 1, 0, 2])
    assert td.complete and td.pending() == []
    assert td.skipped() == []
    assert [p.name for p in td.shard_paths()] == [f"{i:05d}.safetensors" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST] + [p.name for p in td.shard_paths()]
    )
    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["format"] == MANIFEST_FORMAT and manifest["complete"] is True
    assert manifest["num_items"] == 10 and manifest["shard_size"] == 3
    assert manifest["planned_items"] == 10
    assert manifest["planned_keys_sha256"] == manifest["keys_sha256"] == keys_sha256(KEYS)
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 3, 1]
    assert [s["planned"] for s in manifest["shards"]] == [3, 3, 3, 1]
    assert [s["skipped"] for s in manifest["shards"]] == [[], [], [], []]
    assert all(s["done"] for s in manifest["shards"])
    assert TokenHeader.from_dict(manifest["header"]) == header
    assert Manifest.from_dict(manifest, path=out / MANIFEST) == td.manifest

    tf = load_tokens(out)
    assert tf.keys == KEYS
    assert torch.equal(tf.tokens, tokens)
    assert tf.header == header and tf.path == out
    assert [len(p) for p in read_token_dir(out)] == [3, 3, 3, 1]
    # a single shard loads as a file too
    assert load_tokens(out / "00001.safetensors").keys == KEYS[3:6]


def test_fresh_manifest_fields(tmp_path, validator):
    out = tmp_path / "out"
    td = TokenDir.open(out, header=make_header(), keys=KEYS, shard_size=4)
    manifest = read_manifest(out)
    validator.validate(manifest)
    assert list(manifest) == [f.name for f in dataclasses.fields(Manifest)]
    assert manifest["shards"] == [
        {"file": f"{i:05d}.safetensors", "planned": n, "count": None, "skipped": [], "done": False}
        for i, n in enumerate([4, 4, 2])
    ]
    assert (manifest["num_items"], manifest["keys_sha256"], manifest["complete"]) == (
        0,
        None,
        False,
    )
    assert td.manifest == Manifest.plan(header=make_header(), keys=KEYS, shard_size=4)


def test_manifest_fields_after_complete_encode_with_skipped_keys(tmp_path, validator):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    skipped = {0: ["k01"], 1: [], 2: ["k06", "k08"], 3: ["k09"]}
    for index, planned in td.pending():
        skip = skipped[index]
        written = [k for k in planned if k not in skip]
        # skipped keys may be given in any order; the manifest keeps planned order
        td.write_shard(index, rows(tokens, written), skipped=list(reversed(skip)))
    assert td.complete
    written = [k for k in KEYS if k not in {"k01", "k06", "k08", "k09"}]
    assert td.skipped() == ["k01", "k06", "k08", "k09"]

    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["num_items"] == len(written) == 6
    assert manifest["keys_sha256"] == keys_sha256(written)
    assert manifest["planned_items"] == 10
    assert manifest["planned_keys_sha256"] == keys_sha256(KEYS)
    assert [s["planned"] for s in manifest["shards"]] == [3, 3, 3, 1]
    assert [s["count"] for s in manifest["shards"]] == [2, 3, 1, 0]
    assert [s["skipped"] for s in manifest["shards"]] == [["k01"], [], ["k06", "k08"], ["k09"]]
    assert manifest["complete"] is True

    tf = load_tokens(out)
    assert tf.keys == written
    assert torch.equal(tf.tokens, rows(tokens, written))
    assert [len(p) for p in read_token_dir(out)] == [2, 3, 1, 0]
    # the fully skipped shard is a file of zero rows
    empty = read_tokens(out / "00003.safetensors")
    assert empty.tokens.shape == (0, 2, 1) and empty.keys == []

    # resuming the finished folder keeps everything, skipped keys included
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert td2.pending() == [] and td2.skipped() == td.skipped()
    assert read_manifest(out) == manifest


def test_write_shard_with_skipped_keys_then_resume(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    path = td.write_shard(1, rows(tokens, ["k03", "k05"]), keys=["k03", "k05"], skipped=["k04"])
    assert path == out / "00001.safetensors"
    assert read_tokens(path).keys == ["k03", "k05"]
    assert td.skipped() == ["k04"]
    assert [i for i, _ in td.pending()] == [0, 2, 3]
    entry = td.manifest.shards[1]
    assert entry == ShardEntry(
        file="00001.safetensors", planned=3, count=2, skipped=("k04",), done=True
    )
    old = 1_000_000_000
    os.utime(path, ns=(old, old))

    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [0, 2, 3]
    assert td2.pending()[0] == (0, KEYS[0:3])
    assert td2.skipped() == ["k04"]
    write_some(td2, tokens, [0, 2, 3])
    assert path.stat().st_mtime_ns == old
    tf = load_tokens(out)
    assert tf.keys == [k for k in KEYS if k != "k04"]
    assert torch.equal(tf.tokens, rows(tokens, tf.keys))


def test_shard_whose_file_disagrees_with_its_skipped_keys_is_rewritten(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    td.write_shard(0, rows(tokens, ["k00", "k02"]), skipped=["k01"])
    # the file now holds all three planned rows: not what the manifest says was written
    write_tokens(out / "00000.safetensors", tokens[:3], keys=KEYS[:3], header=header)
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [0, 1, 2, 3]
    assert td2.skipped() == []
    entry = read_manifest(out)["shards"][0]
    assert entry == {
        "file": "00000.safetensors",
        "planned": 3,
        "count": None,
        "skipped": [],
        "done": False,
    }


def test_fully_skipped_shard(tmp_path):
    header = make_header(codebook_sizes=(8, 300), grid=(2, 3))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    # tokens=None, or an empty tensor, for a shard with nothing left to write
    td.write_shard(3, None, skipped=["k09"])
    td.write_shard(1, torch.zeros(0, 2, 3, 2, dtype=torch.int64), keys=[], skipped=KEYS[3:6])
    for i in (1, 3):
        tf = read_tokens(td.shard_paths()[i])
        assert tf.tokens.shape == (0, 2, 3, 2) and tf.keys == []
    assert [s.count for s in td.manifest.shards] == [None, 0, None, 0]
    assert td.skipped() == ["k03", "k04", "k05", "k09"]
    write_some(td, tokens, [0, 2])
    tf = load_tokens(out)
    assert tf.keys == KEYS[0:3] + KEYS[6:9]
    assert torch.equal(tf.tokens, rows(tokens, tf.keys))


def test_load_folder_whose_shards_are_all_empty(tmp_path, validator):
    header = make_header(codebook_sizes=(8, 300), grid=(2, 3))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS[:4], shard_size=2)
    td.write_shard(0, None, skipped=KEYS[:2])
    td.write_shard(1, None, skipped=KEYS[2:4])
    assert td.complete
    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["num_items"] == 0 and manifest["keys_sha256"] == keys_sha256([])
    tf = load_tokens(out)
    assert tf.tokens.shape == (0, 2, 3, 2) and tf.tokens.dtype == torch.int64
    assert tf.keys == [] and tf.header == header and tf.path == out


def test_load_folder_with_no_items(tmp_path, validator):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=[], shard_size=3)
    assert td.complete and td.num_shards == 0 and td.pending() == []
    validator.validate(read_manifest(out))
    tf = load_tokens(out)
    assert tf.tokens.shape == (0, 2, 1) and tf.keys == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keys": ["k02", "k00"], "skipped": ["k01"]}, "at row 0 expected 'k00', got 'k02'"),
        (
            {"keys": ["k00", "k01", "k02"], "skipped": ["k01"]},
            "expected 2 key.*, got 3; at row 1 expected 'k02', got 'k01'",
        ),
        ({"keys": ["k00", "k01"]}, "expected 3 key"),
        ({"skipped": ["k05"]}, "'k05'.*not one of that shard's planned keys"),
        ({"skipped": ["k01", "k01"]}, "'k01' is given twice"),
    ],
)
def test_write_shard_keys_must_be_planned_less_skipped(tmp_path, kwargs, match):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    before = read_manifest(out)
    with pytest.raises(ConfigError, match=match):
        td.write_shard(0, all_tokens(header)[:2], **kwargs)
    assert not (out / "00000.safetensors").exists()
    assert read_manifest(out) == before
    assert [i for i, _ in td.pending()] == [0, 1, 2, 3]


def test_write_shard_none_tokens_with_rows_to_write(tmp_path):
    td = TokenDir.open(tmp_path / "out", header=make_header(), keys=KEYS, shard_size=3)
    with pytest.raises(ConfigError, match="2 row"):
        td.write_shard(0, None, skipped=["k00"])
    with pytest.raises(ConfigError, match="out of range"):
        td.write_shard(4, None)


def test_token_dir_write_shard_rejects_wrong_row_count(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    td = TokenDir.open(tmp_path / "out", header=header, keys=KEYS, shard_size=3)
    with pytest.raises(TokenFileError, match="keys"):
        td.write_shard(0, all_tokens(header)[:2])
    with pytest.raises(TokenFileError, match="keys"):
        td.write_shard(0, all_tokens(header)[:3], skipped=["k01"])
    assert [i for i, _ in td.pending()] == [0, 1, 2, 3]


def test_token_dir_refuses_codebooks_too_large_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"2\*\*31"):
        TokenDir.open(out, header=make_header(codebook_sizes=(2**40,)), keys=KEYS, shard_size=3)
    assert not out.exists()


# --------------------------------------------------------------------------- resuming


def test_token_dir_resume_keeps_finished_shards(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1])
    first_two = td.shard_paths()[:2]
    old = 1_000_000_000  # set an old mtime so a rewrite would surely change it
    for p in first_two:
        os.utime(p, ns=(old, old))

    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert td2.pending() == [(2, KEYS[6:9]), (3, KEYS[9:])]
    assert not td2.complete
    write_some(td2, tokens, [i for i, _ in td2.pending()])
    assert td2.complete
    assert [p.stat().st_mtime_ns for p in first_two] == [old, old]
    tf = load_tokens(out)
    assert tf.keys == KEYS and torch.equal(tf.tokens, tokens)

    # reopening a finished folder has nothing to do
    assert TokenDir.open(out, header=header, keys=KEYS, shard_size=3).pending() == []


def test_token_dir_rewrites_shard_whose_file_is_gone(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1])
    (out / "00000.safetensors").unlink()
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [0, 2, 3]
    assert read_manifest(out)["shards"][0]["done"] is False


def test_token_dir_adopts_shard_files_written_without_their_entry(tmp_path):
    """A shard file is the record: one renamed into place but not marked done (another
    rank's, written with ``record=False``, or a run killed between the two writes) is
    adopted on reopening, its skipped keys read from the keys it lacks — the manifest
    ends as if it had been recorded. A file that is not this plan's is written again."""
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    recorded, out = tmp_path / "recorded", tmp_path / "out"
    td = TokenDir.open(recorded, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 2, 3])
    td.write_shard(1, rows(tokens, ["k03", "k05"]), skipped=["k04"])

    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0])
    other = TokenDir.joined(out, keys=KEYS, shard_size=3)  # as rank 1 sees it
    other.write_shard(1, rows(tokens, ["k03", "k05"]), skipped=["k04"], record=False)
    other.write_shard(2, tokens[6:9], record=False)
    assert read_manifest(out)["shards"][1]["done"] is False  # rank 1 never writes it
    # shard 3's file from another tokenizer, and keys out of the plan's order: not adopted
    write_tokens(out / "00003.safetensors", tokens[9:], keys=KEYS[9:],
                 header=make_header(codebook_sizes=(8,), grid=(2,), sha=OTHER_SHA))  # fmt: skip
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [3]
    td2.write_shard(3, tokens[9:])
    assert read_manifest(out) == read_manifest(recorded)
    assert (out / "00001.safetensors").read_bytes() == (recorded / "00001.safetensors").read_bytes()

    swapped = tmp_path / "swapped"
    td = TokenDir.open(swapped, header=header, keys=KEYS, shard_size=3)
    write_tokens(swapped / "00000.safetensors", rows(tokens, ["k01", "k00"]), keys=["k01", "k00"],
                 header=header)  # fmt: skip
    assert [
        i for i, _ in TokenDir.open(swapped, header=header, keys=KEYS, shard_size=3).pending()
    ] == [0, 1, 2, 3]


def test_token_dir_removes_stale_tmp_on_reopen(tmp_path):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0])
    stale = out / ".tmp-00001.safetensors.x1y2z3"
    stale.write_bytes(b"half a shard")
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert not stale.exists()
    assert stale in td2.removed_tmp
    assert [i for i, _ in td2.pending()] == [1, 2, 3]


def test_token_dir_refuses_folder_with_unrelated_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "holiday.jpg"
    precious.write_bytes(b"precious bytes")
    header = make_header(codebook_sizes=(8,), grid=(2,))
    with pytest.raises(OutputDirError) as info:
        TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert "holiday.jpg" in str(info.value) and "never overwrite" in str(info.value)
    assert precious.read_bytes() == b"precious bytes"
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_token_dir_names_at_most_three_foreign_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]:
        (out / name).write_text(name)
    with pytest.raises(OutputDirError) as info:
        TokenDir.open(out, header=make_header(), keys=KEYS, shard_size=3)
    msg = str(info.value)
    assert "a.txt" in msg and "c.txt" in msg and "d.txt" not in msg and "2 more" in msg


def test_token_dir_refuses_foreign_manifest_and_file_path(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"name": "someone else\'s"}')
    with pytest.raises(OutputDirError, match="never overwrites"):
        TokenDir.open(out, header=make_header(), keys=KEYS, shard_size=3)
    assert (out / MANIFEST).read_text() == '{"name": "someone else\'s"}'
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputDirError):
        TokenDir.open(afile, header=make_header(), keys=KEYS, shard_size=3)
    assert afile.read_text() == "x"


def test_token_dir_other_tokenizer_raises_mismatch(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0])
    before = (out / MANIFEST).read_text()
    other = make_header(codebook_sizes=(8,), grid=(2,), sha=OTHER_SHA)
    with pytest.raises(TokenizerMismatchError, match="--out"):
        TokenDir.open(out, header=other, keys=KEYS, shard_size=3)
    assert (out / MANIFEST).read_text() == before


@pytest.mark.parametrize(
    "keys, shard_size",
    [(KEYS[:-1], 3), (list(reversed(KEYS)), 3), (KEYS, 4)],
)
def test_token_dir_other_keys_or_shard_size_raise(tmp_path, keys, shard_size):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    with pytest.raises(OutputDirError, match="cannot resume"):
        TokenDir.open(out, header=header, keys=keys, shard_size=shard_size)


# --------------------------------------------------------------------------- reading


def test_load_incomplete_dir_names_missing_shards(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0, 2])
    with pytest.raises(TokenFileError) as info:
        load_tokens(out)
    msg = str(info.value)
    assert str(out) in msg and "00001.safetensors" in msg and "00003.safetensors" in msg
    assert "00000.safetensors" not in msg


def test_load_dir_without_manifest(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(TokenFileError, match=MANIFEST):
        load_tokens(tmp_path / "d")


def test_load_dir_with_shards_from_different_tokenizers(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1, 2, 3])
    intruder = make_header(codebook_sizes=(8,), grid=(2,), sha=OTHER_SHA)
    write_tokens(out / "00002.safetensors", tokens[6:9], keys=KEYS[6:9], header=intruder)
    with pytest.raises(TokenizerMismatchError, match="00002.safetensors"):
        load_tokens(out)
    # on resume the intruding shard is not counted as finished
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [2]


def test_load_checks_row_count_and_keys_against_manifest(tmp_path):
    out = tmp_path / "out"
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, tokens, [0, 1, 2, 3])
    # fewer rows than the manifest's count
    write_tokens(out / "00001.safetensors", tokens[3:5], keys=KEYS[3:5], header=header)
    with pytest.raises(
        TokenFileError, match=r"00001\.safetensors holds 2 rows, the manifest says 3"
    ):
        load_tokens(out)
    # the right count but other keys
    write_tokens(out / "00001.safetensors", tokens[3:6], keys=["x", "y", "z"], header=header)
    with pytest.raises(TokenFileError, match="keys do not match"):
        load_tokens(out)


# --------------------------------------------------------------------------- format 1


def test_v1_folder_still_loads(tmp_path):
    header = make_header(codebook_sizes=(8, 300), grid=(2,), full=True)
    tokens = all_tokens(header)
    out = tmp_path / "old"
    v1 = write_v1_folder(out, tokens, keys=KEYS, header=header, shard_size=3, done={0, 1, 2, 3})
    tf = load_tokens(out)
    assert tf.keys == KEYS and torch.equal(tf.tokens, tokens) and tf.header == header
    assert read_manifest(out) == v1  # reading never rewrites


def test_v1_manifest_converts_in_memory(tmp_path, validator):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "old"
    v1 = write_v1_folder(
        out, all_tokens(header), keys=KEYS, header=header, shard_size=3, done={0, 2}
    )
    m = Manifest.from_dict(v1, path=out / MANIFEST)
    assert m.format == MANIFEST_FORMAT
    assert (m.planned_items, m.shard_size, m.num_items) == (10, 3, 6)
    assert m.planned_keys_sha256 == keys_sha256(KEYS)
    assert m.keys_sha256 is None and m.complete is False
    assert m.shards == (
        ShardEntry(file="00000.safetensors", planned=3, count=3, done=True),
        ShardEntry(file="00001.safetensors", planned=3),
        ShardEntry(file="00002.safetensors", planned=3, count=3, done=True),
        ShardEntry(file="00003.safetensors", planned=1),
    )
    validator.validate(m.to_dict())


def test_v1_folder_resumes_and_is_rewritten_as_v2(tmp_path, validator):
    header = make_header(codebook_sizes=(8,), grid=(2,), full=True)
    tokens = all_tokens(header)
    out = tmp_path / "old"
    write_v1_folder(out, tokens, keys=KEYS, header=header, shard_size=3, done={0, 2})
    with pytest.raises(TokenFileError, match="00001.safetensors"):
        load_tokens(out)
    kept = [out / "00000.safetensors", out / "00002.safetensors"]
    old = 1_000_000_000
    for p in kept:
        os.utime(p, ns=(old, old))

    # resuming with the new tokenizer header (which names its plugins) keeps the old one
    td = TokenDir.open(
        out,
        header=make_header(codebook_sizes=(8,), grid=(2,), plugins=PLUGINS),
        keys=KEYS,
        shard_size=3,
    )
    assert td.header == header
    assert [i for i, _ in td.pending()] == [1, 3]
    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["num_items"] == 6 and manifest["planned_items"] == 10
    assert [s["count"] for s in manifest["shards"]] == [3, None, 3, None]

    td.write_shard(1, rows(tokens, ["k03", "k05"]), skipped=["k04"])
    td.write_shard(3, tokens[9:])
    assert [p.stat().st_mtime_ns for p in kept] == [old, old]
    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["complete"] and manifest["num_items"] == 9
    tf = load_tokens(out)  # v1 and v2 shard files together
    assert tf.keys == [k for k in KEYS if k != "k04"]
    assert torch.equal(tf.tokens, rows(tokens, tf.keys))


def test_complete_v1_folder_resumes_with_nothing_to_do(tmp_path, validator):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "old"
    write_v1_folder(
        out, all_tokens(header), keys=KEYS, header=header, shard_size=3, done={0, 1, 2, 3}
    )
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert td.pending() == [] and td.complete
    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["keys_sha256"] == keys_sha256(KEYS)


# --------------------------------------------------------------------------- unknown formats


@pytest.mark.parametrize("fmt", ["tok.manifest/5", "tok.tokens/2"])
def test_unknown_manifest_format_is_one_clear_line(tmp_path, fmt):
    header = make_header(codebook_sizes=(8,), grid=(2,))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    write_some(td, all_tokens(header), [0, 1, 2, 3])
    manifest = read_manifest(out) | {"format": fmt}
    (out / MANIFEST).write_text(json.dumps(manifest))
    line = (
        f"{out / MANIFEST} was written in format {fmt!r}, which this version of tok cannot "
        "read (it reads tok.tokens/1, tok.manifest/2, tok.manifest/3, tok.manifest/4); "
        "upgrade tok"
    )
    with pytest.raises(TokenFileError) as info:
        load_tokens(out)
    assert str(info.value) == line
    with pytest.raises(TokenFileError) as info:
        Manifest.from_dict(manifest, path=out / MANIFEST)
    assert str(info.value) == line
    with pytest.raises(OutputDirError) as info:
        TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert str(info.value).startswith(line) and "\n" not in str(info.value)
    assert read_manifest(out) == manifest


# --------------------------------------------------------------------------- the record


def complete_manifest(tmp_path) -> dict:
    header = make_header(codebook_sizes=(8,), grid=(2,))
    tokens = all_tokens(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    td.write_shard(0, rows(tokens, ["k00", "k02"]), skipped=["k01"])
    write_some(td, tokens, [1, 2])
    return read_manifest(out)


def _set(path: str, value):
    """A change to a manifest dict: set the field at dotted ``path`` (``-`` deletes it)."""

    def change(m: dict) -> None:
        *parents, last = path.split(".")
        target = m
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        key = int(last) if last.isdigit() else last
        if value == "-":
            del target[key]
        else:
            target[key] = value

    return change


# (change, field named in the error, whether the schema alone catches it)
CORRUPTIONS = [
    (_set("shard_size", "-"), "shard_size", True),
    (_set("shard_size", 0), "shard_size", True),
    (_set("planned_items", "10"), "planned_items", True),
    (_set("planned_keys_sha256", "abc"), "planned_keys_sha256", True),
    (_set("shards", {}), "shards", True),
    (_set("num_items", -1), "num_items", True),
    (_set("num_items", 7), "num_items", False),
    (_set("keys_sha256", "f" * 64), "keys_sha256", False),
    (_set("keys_sha256", "not a sha"), "keys_sha256", True),
    (_set("complete", 1), "complete", True),
    (_set("complete", True), "complete", False),
    (_set("extra", 1), "'extra'", True),
    (_set("header.grid", [0]), "'grid'", True),
    (_set("header.quantizer", "-"), "quantizer", True),
    (_set("shards.0.file", "00007.safetensors"), "shards[0].file", False),
    (_set("shards.0.file", "a.safetensors"), "shards[0].file", True),
    (_set("shards.0.planned", 2), "shards[0].planned", False),
    (_set("shards.0.count", 3), "shards[0].count", False),
    (_set("shards.3.count", 0), "shards[3].count", True),
    (_set("shards.3.skipped", ["k09"]), "shards[3].skipped", True),
    (_set("shards.0.skipped", ["k01", "k01"]), "shards[0].skipped", True),
    (_set("shards.0.done", "yes"), "shards[0].done", True),
    (_set("shards.1.extra", 1), "'extra'", True),
    (_set("shards.3", "-"), "shards", False),
]


@pytest.mark.parametrize("change, field, schema_catches", CORRUPTIONS)
def test_manifest_from_dict_names_path_and_field(
    tmp_path, validator, change, field, schema_catches
):
    good = complete_manifest(tmp_path)
    good["complete"] = False  # an incomplete folder: shard 3 not done
    good["keys_sha256"] = None
    good["num_items"] = 2 + 3 + 3
    good["shards"][3] |= {"done": False, "count": None, "skipped": []}
    validator.validate(good)
    Manifest.from_dict(good, path="m.json")
    bad = copy.deepcopy(good)
    change(bad)
    with pytest.raises(TokenFileError) as info:
        Manifest.from_dict(bad, path="where/manifest.json")
    msg = str(info.value)
    assert msg.startswith("where/manifest.json") and field in msg and "\n" not in msg
    if schema_catches:
        assert not validator.is_valid(bad)


def test_manifest_round_trips_through_dict(tmp_path):
    d = complete_manifest(tmp_path)
    m = Manifest.from_dict(d, path="m.json")
    assert m.to_dict() == d
    assert isinstance(m.header, TokenHeader) and isinstance(m.shards[0], ShardEntry)
    assert m.shards[0].skipped == ("k01",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.complete = False  # type: ignore[misc]


# --------------------------------------------------------------------------- the schema


def test_schema_properties_are_the_record_fields():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    manifest_fields = [f.name for f in dataclasses.fields(Manifest)]
    assert list(schema["properties"]) == manifest_fields
    assert schema["required"] == manifest_fields
    shard_fields = [f.name for f in dataclasses.fields(ShardEntry)]
    assert list(schema["$defs"]["shard"]["properties"]) == shard_fields
    assert schema["$defs"]["shard"]["required"] == shard_fields
    header_fields = [f.name for f in dataclasses.fields(TokenHeader)]
    assert list(schema["$defs"]["header"]["properties"]) == header_fields
    latent = schema["$defs"]["latent_header"]
    full = make_latent_header(full=True).to_dict()
    assert list(latent["properties"]) == [*full, "ragged"]
    assert set(latent["properties"]) == {"kind"} | {
        f.name for f in dataclasses.fields(LatentHeader)
    }
    assert latent["required"] == list(make_latent_header().to_dict())
    assert schema["properties"]["format"]["enum"] == [
        MANIFEST_FORMAT,
        LATENT_MANIFEST_FORMAT,
        RAGGED_MANIFEST_FORMAT,
    ]


def test_schema_validates_a_real_manifest(tmp_path, validator):
    manifest = complete_manifest(tmp_path)
    validator.validate(manifest)
    assert manifest["shards"][0]["skipped"] == ["k01"]
    # and rejects the previous format
    header = make_header(codebook_sizes=(8,), grid=(2,))
    v1 = write_v1_folder(
        tmp_path / "old", all_tokens(header), keys=KEYS, header=header, shard_size=3, done={0}
    )
    assert not validator.is_valid(v1)


# --------------------------------------------------------------------------- latents
# A folder of a continuous tokenizer's latents: the same shards, plan, resume and checks;
# its manifest is tok.manifest/3 and its header a LatentHeader.


def all_latents(header: LatentHeader) -> torch.Tensor:
    return random_latents(len(KEYS), header, seed=1)


def test_latent_folder_writes_resumes_and_loads(tmp_path, validator):
    header = make_latent_header(latent_dim=5, dtype="float16", full=True)
    latents = all_latents(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert read_manifest(out)["format"] == LATENT_MANIFEST_FORMAT
    td.write_shard(0, rows(latents, ["k00", "k02"]), skipped=["k01"])
    write_some(td, latents, [1])
    old = 1_000_000_000
    for p in td.shard_paths()[:2]:
        os.utime(p, ns=(old, old))

    # resumed: the finished shards are kept, a stale temporary file is removed
    (out / ".tmp-00002.safetensors.x1").write_bytes(b"half")
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [2, 3] and td2.removed_tmp
    write_some(td2, latents, [2, 3])
    assert td2.complete
    assert [p.stat().st_mtime_ns for p in td2.shard_paths()[:2]] == [old, old]

    manifest = read_manifest(out)
    validator.validate(manifest)
    assert manifest["format"] == LATENT_MANIFEST_FORMAT
    assert manifest["header"] == header.to_dict() and manifest["header"]["kind"] == "latents"
    assert manifest["num_items"] == 9 and manifest["shards"][0]["skipped"] == ["k01"]
    assert Manifest.from_dict(manifest, path=out / MANIFEST) == td2.manifest

    tf = load_tokens(out)
    kept = [k for k in KEYS if k != "k01"]
    assert tf.kind == "latents" and tf.keys == kept and tf.header == header
    assert tf.tokens.dtype == torch.float32
    assert torch.equal(tf.tokens, rows(latents, kept).half().float())
    assert TokenDir.open(out, header=header, keys=KEYS, shard_size=3).pending() == []


def test_latent_shard_written_without_its_entry_is_adopted(tmp_path):
    header = make_latent_header(latent_dim=3)
    latents = all_latents(header)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    td.write_shard(1, latents[3:6], record=False)  # as another rank writes it
    assert read_manifest(out)["shards"][1]["done"] is False
    td2 = TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    assert [i for i, _ in td2.pending()] == [0, 2, 3]
    assert read_manifest(out)["shards"][1]["done"] is True


def test_latent_folder_with_no_rows_loads_as_float32(tmp_path, validator):
    header = make_latent_header(latent_dim=4, grid=(2, 3))
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS[:2], shard_size=5)
    td.write_shard(0, None, skipped=KEYS[:2])
    validator.validate(read_manifest(out))
    tf = load_tokens(out)
    assert tf.tokens.shape == (0, 2, 3, 4) and tf.tokens.dtype == torch.float32


def test_resuming_latents_in_another_dtype_or_as_tokens_is_refused(tmp_path):
    header = make_latent_header(latent_dim=4)
    out = tmp_path / "out"
    write_some(TokenDir.open(out, header=header, keys=KEYS, shard_size=3), all_latents(header), [0])
    before = read_manifest(out)
    with pytest.raises(OutputDirError) as info:
        TokenDir.open(out, header=make_latent_header(latent_dim=4, dtype="bfloat16"), keys=KEYS,
                      shard_size=3)  # fmt: skip
    assert str(info.value) == (
        f"cannot resume {out}: it holds latents 1x4 float32, not latents 1x4 bfloat16. Choose a "
        "new --out folder, or rerun with the same source, options and shard size."
    )
    with pytest.raises(OutputDirError, match="it holds latents 1x4 float32, not tokens 1x1"):
        TokenDir.open(out, header=make_header(grid=(1,)), keys=KEYS, shard_size=3)
    assert read_manifest(out) == before


def test_a_shard_of_the_other_kind_is_refused_on_load(tmp_path):
    header = make_latent_header(latent_dim=4)
    out = tmp_path / "out"
    td = TokenDir.open(out, header=header, keys=KEYS[:3], shard_size=3)
    td.write_shard(0, all_latents(header)[:3])
    tokens_header = make_header(grid=(1,), codebook_sizes=(4,))
    write_tokens(out / "00000.safetensors", random_tokens(3, tokens_header), keys=KEYS[:3],
                 header=tokens_header)  # fmt: skip
    with pytest.raises(TokenFileError) as info:
        load_tokens(out)
    assert str(info.value) == (
        f"{out / '00000.safetensors'}: holds tokens 1x1 (codebook sizes 4), but "
        f"{out / MANIFEST} says latents 1x4 float32"
    )


def test_a_manifest_of_latents_in_the_tokens_format_is_refused(tmp_path, validator):
    header = make_latent_header(latent_dim=4)
    out = tmp_path / "out"
    TokenDir.open(out, header=header, keys=KEYS, shard_size=3)
    manifest = read_manifest(out) | {"format": MANIFEST_FORMAT}
    assert not validator.is_valid(manifest)
    with pytest.raises(TokenFileError, match="manifest field 'header' holds latents, which a "
                       "manifest of format 'tok.manifest/2' cannot"):  # fmt: skip
        Manifest.from_dict(manifest, path=out / MANIFEST)


# --------------------------------------------------------------------------- ragged rows


def test_a_folder_of_ragged_rows_writes_loads_and_validates(tmp_path, validator):
    header = dataclasses.replace(make_header(codebook_sizes=(16,), grid=(4, 4)), ragged=True)
    keys = ["a", "b", "c"]
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 16, (*grid, 1), generator=g) for grid in [(2, 3), (4, 4), (1, 1)]]
    sizes = [[8, 12], [16, 13], [2, 3]]
    td = TokenDir.open(tmp_path / "out", header=header, keys=keys, shard_size=2)
    td.write_shard(0, rows[:2], sizes=sizes[:2])
    td.write_shard(1, None, skipped=["c"])  # a shard of zero ragged rows
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    validator.validate(manifest)
    assert manifest["format"] == RAGGED_MANIFEST_FORMAT and manifest["header"]["ragged"] is True
    tf = load_tokens(tmp_path / "out")
    assert tf.keys == ["a", "b"] and tf.sizes.tolist() == sizes[:2]
    assert all(torch.equal(r, w) for r, w in zip(tf.rows(), rows[:2], strict=True))
    # a uniform header cannot resume it, and a manifest that mislabels it is refused
    with pytest.raises(OutputDirError, match="it holds tokens ragged"):
        TokenDir.open(tmp_path / "out", header=make_header(codebook_sizes=(16,), grid=(4, 4)),
                      keys=keys, shard_size=2)  # fmt: skip
    with pytest.raises(TokenFileError, match="holds ragged: true, which a manifest of format"):
        Manifest.from_dict(manifest | {"format": "tok.manifest/2"}, path="m.json")
    bad = copy.deepcopy(manifest)
    bad["header"].pop("ragged")
    assert not validator.is_valid(bad)
