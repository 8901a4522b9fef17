"""The hooks through which plugins add quantizers, architectures and datasets.

Every hook is ``register_<things>(register)``: tok hands the plugin a
callback, so the core decides how a registration is recorded (which plugin
owns it, aliases, duplicates) and a plugin stays a few lines long::

    from tok import hookimpl

    @hookimpl
    def register_quantizers(register):
        register(MyQuantizer, name="mine", aliases=("my-q",))

The built-in plugins (``tok.plugins.*``) use these hooks exactly like a
third-party package does. Set ``TOK_TRACE_HOOKS=1`` to print every hook call.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "tok"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_quantizers(register: Register) -> None:
    """Register quantizer classes.

    :param register: call ``register(cls, name=None, aliases=())`` once per
        quantizer. ``cls`` is a subclass of :class:`tok.Quantizer`; ``name``
        defaults to ``cls.name`` or the lower-cased class name; ``aliases``
        are extra names that resolve to the same class.

    The return value is ignored. Registering a name another plugin also
    registers makes that name an error (naming both owners) until one of the
    plugins is removed; the other names keep working.
    """


@hookspec
def register_architectures(register: Register) -> None:
    """Register tokenizer architectures (encoder/decoder families).

    :param register: call ``register(cls, name=None, aliases=())`` once per
        architecture. ``cls`` is a subclass of
        :class:`tok.models.Architecture`: it maps images (or videos) to
        channel-last latents ``(B, *grid, D)`` and back.

    The return value is ignored.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets that recipes and ``tok encode`` can name.

    :param register: call ``register(cls, name=None, aliases=())`` once per
        dataset. ``cls`` is a subclass of :class:`tok.data.Dataset`; its
        keyword-only constructor arguments are the keys allowed in a recipe's
        ``[data]`` table.

    The return value is ignored.
    """
