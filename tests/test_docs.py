"""The plugin guide (docs/plugins.md) keeps up with the code.

As in datasette: every hook is documented with its exact signature and has a
test named after it; the guide's example plugin really works; every ``tok.…``
name and relative link in the guide exists.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import tok
from tok import hookspecs
from tok.testing import check_quantizer

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
TEXT = GUIDE.read_text()
HOOKS = sorted(
    name
    for name, fn in vars(hookspecs).items()
    if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def test_hooks_found():
    assert HOOKS == [
        "register_architectures",
        "register_bottlenecks",
        "register_datasets",
        "register_losses",
        "register_quantizers",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    assert f"### {hook}(register)" in TEXT, (
        f"docs/plugins.md needs a section '### {hook}(register)'"
    )
    assert f"def {hook}(register):" in TEXT, f"docs/plugins.md needs an example of {hook}"


def test_the_register_callback_is_documented():
    assert "register(cls, name=None, aliases=())" in TEXT


def all_test_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        names |= {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return names


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test_named_after_it(hook):
    tests = [n for n in all_test_names() if hook in n]
    assert tests, f"no test in tests/ has {hook!r} in its name"


@pytest.mark.parametrize("var", ["TOK_PLUGINS", "TOK_STRICT_PLUGINS", "TOK_TRACE_HOOKS"])
def test_environment_variables_are_documented_and_real(var):
    assert var in TEXT
    assert var in (ROOT / "tokenizers" / "registry.py").read_text()


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_tok_name_in_the_guide_exists():
    names = set(re.findall(r"\b(tok(?:\.[A-Za-z_]\w*)+)", TEXT))
    names = {n for n in names if not n.endswith((".toml", ".py", ".md"))}
    assert "tok.testing.check_quantizer" in names
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/plugins.md names things that do not exist: {missing}"


def test_relative_links_exist():
    for target in re.findall(r"\]\((\.\.?/[^)#]*)", TEXT):
        assert (GUIDE.parent / target).exists(), f"broken link in docs/plugins.md: {target}"


def test_the_guides_example_plugin_works():
    """The first code block is a complete plugin; the register_plugin block uses it."""
    blocks = python_blocks()
    (module_src,) = [
        b for b in blocks if "class BinaryQuantizer(Quantizer):" in b and "def forward" in b
    ]
    namespace: dict[str, object] = {}
    exec(compile(module_src, "docs/plugins.md", "exec"), namespace)
    cls = namespace["BinaryQuantizer"]
    check_quantizer(cls, config={"dim": 6, "bits": 2})
    check_quantizer(cls, config={"dim": 8, "bits": 4})

    (inprocess_src,) = [b for b in blocks if "tok.register_plugin(" in b]
    try:
        exec(compile(inprocess_src, "docs/plugins.md", "exec"), namespace)
        q = namespace["q"]
        assert isinstance(q, cls) and q.codebook_sizes == (16, 16)
        assert "my-binary" not in tok.list_quantizers()  # the block unregisters at its end
    finally:
        tok.registry.unregister_plugin("my-plugin")
