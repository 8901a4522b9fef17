"""The hook surface (tok.hookspecs): small, uniform and documented."""

from __future__ import annotations

import inspect

import pluggy

import tok
from tok import hookspecs


def hookspec_functions() -> dict[str, object]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
    }


HOOKS = hookspec_functions()


def test_there_are_hooks_for_each_kind_of_component():
    assert set(HOOKS) == {
        "register_quantizers",
        "register_bottlenecks",
        "register_architectures",
        "register_datasets",
        "register_losses",
    }


def test_every_hookspec_has_a_docstring():
    for name, fn in HOOKS.items():
        doc = inspect.getdoc(fn)
        assert doc and len(doc) > 40, f"hookspec {name} needs a docstring"
        assert ":param register:" in doc, f"hookspec {name} must document its argument"


def test_every_hookspec_is_register_things_taking_register():
    for name, fn in HOOKS.items():
        assert name.startswith("register_") and name.endswith("s"), name
        assert list(inspect.signature(fn).parameters) == ["register"], name


def test_hookspecs_collect_every_result():
    # no firstresult: every plugin's registrations count, none stops the others
    for name, fn in HOOKS.items():
        opts = getattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
        assert not opts.get("firstresult"), name
        assert not opts.get("historic"), name


def test_hookimpl_is_the_public_marker():
    assert tok.hookimpl is hookspecs.hookimpl
    assert isinstance(tok.hookimpl, pluggy.HookimplMarker)
    assert hookspecs.PROJECT_NAME == "tok"

    @tok.hookimpl
    def register_quantizers(register):
        pass

    assert hasattr(register_quantizers, "tok_impl")


def test_builtin_plugins_implement_only_declared_hooks():
    from tok.plugins import conv, datasets, fsq

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module in (fsq, conv, datasets):
        pm.register(module)
    pm.check_pending()  # raises for a hookimpl without a matching hookspec
