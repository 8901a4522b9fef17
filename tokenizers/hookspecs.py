"""The hooks through which plugins add quantizers, continuous bottlenecks, architectures,
datasets and training losses.

Every hook is ``register_<things>(register)``: tok hands the plugin a
callback, so the core decides how a registration is recorded (which plugin
owns it, aliases, duplicates) and a plugin stays a few lines long::

    from tok import hookimpl

    @hookimpl
    def register_quantizers(register):
        register(MyQuantizer, name="mine", aliases=("my-q",))

The built-in plugins (``tok.plugins.*``) use these hooks exactly like a
third-party package does. Set ``TOK_TRACE_HOOKS=1`` to print every hook call.

tok calls each implementation with only the arguments it names (as pluggy
does), so a hook may gain arguments in a later version of tok without
breaking a plugin written against this one; and a plugin whose module holds
a ``@hookimpl`` function that matches no hook here (``register_quantizer``)
fails to load with a message saying so.
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
def register_bottlenecks(register: Register) -> None:
    """Register continuous bottlenecks (the Gaussian of a VAE …).

    :param register: call ``register(cls, name=None, aliases=())`` once per
        bottleneck. ``cls`` is a subclass of
        :class:`tok.bottleneck.ContinuousBottleneck`: it maps the encoder's latents
        ``(B, *grid, D)`` to a :class:`tok.bottleneck.LatentOutput` and stored latents
        back with ``latent_to_codes``. A recipe names it in its ``[bottleneck]`` table,
        where a discrete tokenizer has ``[quantizer]``.

    The return value is ignored.
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


@hookspec
def register_losses(register: Register) -> None:
    """Register training losses (reconstruction, perceptual, adversarial …).

    :param register: call ``register(cls, name=None, aliases=())`` once per
        loss. ``cls`` is a subclass of :class:`tok.losses.Loss`; its
        keyword-only constructor arguments are the keys of the recipe's
        ``[losses.NAME]`` table (``train.loss`` names the reconstruction loss).

    The training loop asks the registry for every loss a recipe names and
    never imports one by name; whatever a loss keeps (a discriminator, its
    optimizer) is saved in the run's checkpoint. The return value is ignored.
    """
