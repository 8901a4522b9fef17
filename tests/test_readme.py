"""The README cannot drift from the code: its Python blocks run, and its command table lists
exactly the commands and options the parser has."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tok_cli

from tok import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_python_blocks_run(trained_run, tmp_path, monkeypatch, capsys):
    """Every Python block, in order, in a folder holding the Quickstart's run and tokens."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_run, tmp_path / "runs" / "fsq_mnist")
    code, _, err = tok_cli(
        capsys,
        "encode",
        "mnist:test",
        "--out",
        "tokens/fsq_mnist",
        "--limit",
        "50",
        "--no-progress",
    )
    assert code == 0, err
    namespace: dict[str, object] = {}
    blocks = python_blocks()
    assert len(blocks) >= 4
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    # what the first block's comments promise
    assert namespace["indices"].shape == (4, 7, 7, 1) and namespace["indices"].dtype == torch.int64
    assert namespace["recon"].shape == (4, 1, 28, 28)
    assert float(namespace["recon"].min()) >= 0 and float(namespace["recon"].max()) <= 1
    assert namespace["q"].codebook_sizes == (1024,) * 4  # the rvq block's quantizer, last
    assert len(namespace["tf"].keys) == 50  # the token-files block


def readme_commands() -> dict[str, set[str]]:
    """Command → the options its rows of the README's command table name."""
    found: dict[str, set[str]] = {}
    for row in section("The `tok` command").splitlines():
        m = re.match(r"\| `tok (\w[\w-]*)", row)
        if m:
            first_cell = row.split("|")[1]
            options = set(re.findall(r"(--[a-z][a-z-]*)", row))
            found.setdefault(m.group(1), set()).update(options)
            assert "tok " + m.group(1) in first_cell
    return found


def parser_commands() -> dict[str, set[str]]:
    return {
        name: {
            o
            for a in p._actions
            for o in a.option_strings
            if o.startswith("--") and o not in ("--help", "--debug")
        }
        for name, p in cli.build_parser().commands.items()
    }


def test_the_command_table_lists_every_command_and_option():
    readme, parser = readme_commands(), parser_commands()
    assert set(readme) == set(parser), "commands in the README table vs the parser"
    for name in parser:
        assert readme[name] == parser[name], (
            f"tok {name}: the README names {sorted(readme[name] - parser[name])} that the parser "
            f"lacks and lacks {sorted(parser[name] - readme[name])}"
        )


@pytest.mark.parametrize("command", sorted(parser_commands()))
def test_every_command_has_help(command, capsys):
    code, out, _ = tok_cli(capsys, command, "--help")
    assert code == 0 and f"usage: tok {command}" in out
