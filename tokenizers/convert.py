"""One-call migration from vector-quantize-pytorch to tok's quantizers.

:func:`from_vector_quantize_pytorch` takes a trained quantizer of
vector-quantize-pytorch (https://github.com/lucidrains/vector-quantize-pytorch)
— the module, or its state dict plus its constructor arguments — and returns the
tok quantizer that gives the same codes and the same indices, with every learned
tensor copied (codebooks, EMA cluster sizes and sums, k-means ``initted`` flags,
projections) so that training can go on in tok.

- ``FSQ`` → ``fsq`` (:class:`tok.plugins.fsq.FSQ`), ``LFQ`` → ``lfq``
  (:class:`tok.plugins.lfq.LFQ`);
- ``VectorQuantize`` → ``vq`` (:class:`tok.plugins.vq.VQ`); with ``heads=h`` and no
  projection → ``mgvq`` (:class:`tok.plugins.mgvq.MultiGroupVQ`) with ``groups=h``;
- ``ResidualVQ`` → ``rvq`` (:class:`tok.plugins.rvq.ResidualVQ`);
- ``GroupedResidualVQ`` → ``mgvq`` with ``num_quantizers=1``, ``rvq`` with ``groups=1``.

Indices: tok's are always int64 ``(b, ..., s)`` with a stream axis. FSQ, VQ,
residual VQ: the same numbers. LFQ: the same bits in reverse order (theirs
number the first channel as the most significant bit, tok as the least;
:func:`reverse_bits` maps either way). Grouped: theirs ``(groups, b, ..., q)``,
tok ``(b, ..., groups)`` (``ours[..., g] == theirs[g, ..., 0]``). Inputs are
channel-last in tok; their FSQ and LFQ take images and videos channel-first.

An option of theirs that changes the codes or indices, or adds a loss tok
cannot compute, raises :class:`tok.errors.ConfigError` in one line naming it.
Options that only change how training moves (the rotation trick, dead-code
replacement by EMA cluster size, ``freeze_codebook``, ``quant_grad_frac``,
``frac_per_sample_entropy``) are not carried over: see the function's docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .components import create_quantizer
from .errors import ConfigError
from .quantizer import Quantizer

__all__ = ["KINDS", "from_vector_quantize_pytorch", "reverse_bits"]

#: The vector-quantize-pytorch classes :func:`from_vector_quantize_pytorch` converts.
KINDS = ("VectorQuantize", "FSQ", "LFQ", "ResidualVQ", "GroupedResidualVQ")

_REQUIRED = object()  # a constructor argument without a default

# Their constructor arguments, per class. _DEFAULTS: those tok maps, with their default
# (_REQUIRED: none). _OFF: those tok supports only when off (false, 0 or None), with what
# tok does instead. _IGNORED: those that change only layouts, dtypes, distributed syncing,
# options of refused features, or only how training moves (see the function's docstring).
# Any other argument is unknown to the converter, and refused.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "VectorQuantize": {
        "dim": _REQUIRED, "codebook_size": _REQUIRED, "codebook_dim": None, "heads": 1,
        "separate_codebook_per_head": False, "decay": 0.8, "eps": 1e-5, "kmeans_iters": 10,
        "use_cosine_sim": False, "commitment_weight": 1.0, "ema_update": None,
        "learnable_codebook": None, "route_gradients_to_input": True,
    },
    "FSQ": {"levels": _REQUIRED, "dim": None, "num_codebooks": 1},
    "LFQ": {
        "dim": None, "codebook_size": None, "num_codebooks": 1, "entropy_loss_weight": 0.1,
        "commitment_loss_weight": 0.0, "diversity_gamma": 1.0, "codebook_scale": 1.0,
        "has_projections": None, "straight_through_activation": None,
    },
    "ResidualVQ": {
        "dim": _REQUIRED, "num_quantizers": None, "codebook_size": _REQUIRED,
        "codebook_dim": None, "shared_codebook": False, "beam_size": None,
        "eval_beam_size": None,
    },
}  # fmt: skip
_OFF: dict[str, dict[str, str]] = {
    "VectorQuantize": {
        "layernorm_after_project_in": "tok's projection is a plain Linear layer",
        "commitment_use_cross_entropy_loss": "tok's commitment loss is the squared error",
        "orthogonal_reg_weight": "tok has no orthogonal regularisation of the codebook",
        "codebook_diversity_loss_weight": "tok's VQ has no codebook diversity loss",
        "stochastic_sample_codes": "tok always takes the nearest code",
        "directional_reparam": "tok uses the straight-through estimator",
        "manual_ema_update": "tok updates its EMA codebook in every training forward",
        "affine_param": "tok's VQ has no affine re-parameterisation of the codebook",
        "vq_bridge": "tok's codebook is used as it is",
        "in_place_codebook_optimizer": "tok learns a codebook without EMA through your "
        "optimizer (learnable_codebook=True, ema_update=False)",
        "sync_update_v": "tok uses the straight-through estimator",
    },
    "FSQ": {
        "preserve_symmetry": "tok's FSQ uses the paper's bound",
        "noise_dropout": "tok's FSQ always rounds",
        "bound_hard_clamp": "tok's FSQ bounds with tanh",
        "orthogonal_rotation": "tok's FSQ has no rotation",
    },
    "LFQ": {
        "soft_clamp_input_value": "tok does not clamp the input",
        "cosine_sim_project_in": "tok's projection is a plain Linear layer",
        "experimental_softplus_entropy_loss": "tok's entropy loss is the paper's",
        "spherical": "tok's codes are ±codebook_scale per channel, not on a sphere",
        "orthogonal_rotation": "tok's LFQ has no rotation",
    },
    "ResidualVQ": {
        "diveq": "tok learns codebooks by EMA or the codebook loss",
        "quantize_dropout": "tok quantizes with every level in training too",
        "implicit_neural_codebook": "tok's levels have plain codebooks",
    },
}
_IGNORED: dict[str, set[str]] = {
    "VectorQuantize": {
        "kmeans_init", "threshold_ema_dead_code", "freeze_codebook", "rotation_trick",
        "straight_through", "sample_codebook_temp", "sync_kmeans", "sync_codebook",
        "sync_affine_param", "channel_last", "accept_image_fmap", "accept_3d_fmap",
        "return_zeros_for_masked_padding", "orthogonal_reg_active_codes_only",
        "orthogonal_reg_max_codes", "codebook_diversity_temperature",
        "directional_reparam_variance", "manual_in_place_optimizer_update",
        "affine_param_batch_decay", "affine_param_codebook_decay",
    },
    "FSQ": {
        "keep_num_codebooks_dim", "scale", "allowed_dtypes", "channel_first",
        "projection_has_bias", "return_indices", "force_quantization_f32",
    },
    "LFQ": {
        "keep_num_codebooks_dim", "frac_per_sample_entropy", "projection_has_bias",
        "cosine_sim_project_in_scale", "channel_first", "entropy_loss_offset",
        "force_quantization_f32",
    },
    "ResidualVQ": {
        "heads", "quantize_dropout_cutoff_index", "quantize_dropout_multiple_of",
        "accept_image_fmap", "mlp_kwargs", "beam_score_quantizer_weights", "quant_grad_frac",
        "return_zeros_for_masked_padding",
    },
}  # fmt: skip
# Where a module keeps an argument that is neither its attribute of the same name nor (a
# VectorQuantize) its Codebook's.
_READ: dict[str, dict[str, str | Callable[[nn.Module], Any]]] = {
    "VectorQuantize": {
        "codebook_dim": lambda m: int(m._codebook.embed.shape[-1]),
        "layernorm_after_project_in": lambda m: isinstance(m.project_in, nn.Sequential),
        "stochastic_sample_codes": "_codebook.gumbel_sample.keywords.stochastic",
    },
    "FSQ": {"levels": lambda m: [int(v) for v in m._levels.tolist()]},
    "LFQ": {
        "straight_through_activation": "activation",
        "cosine_sim_project_in": lambda m: type(m.project_in).__name__ == "CosineSimLinear",
    },
    "ResidualVQ": {
        "dim": lambda m: m.project_in.in_features if m.has_projections else m.codebook_dim,
        "codebook_size": lambda m: tuple(m.codebook_sizes),
    },
}

# Refusals that depend on more than one option: (argument, is the value fine given all
# options, what tok does instead).
Rule = tuple[str, Callable[[Any, dict[str, Any]], bool], str]
# fmt: off
_RULES: dict[str, list[Rule]] = {
    "VectorQuantize": [
        ("heads", lambda h, o: h == 1 or h * o["codebook_dim"] == o["dim"],
         "tok splits the channels into groups before projecting them (mgvq), so heads > 1 "
         "needs codebook_dim = dim / heads"),
        ("ema_update", lambda e, o: bool(e) != bool(o["learnable_codebook"]),
         "tok's codebook is either updated by EMA (ema_update=True) or a parameter learned "
         "by the codebook loss (learnable_codebook=True, ema_update=False)"),
        ("route_gradients_to_input", lambda v, o: bool(v),
         "tok always passes the straight-through gradient to the input"),
    ],
    "FSQ": [],
    "LFQ": [
        ("straight_through_activation", lambda a, o: a is None or type(a).__name__ == "Identity",
         "tok's straight-through gradient is the identity"),
        ("has_projections", lambda p, o: bool(p) == (o["dim"] != o["bits"] * o["num_codebooks"]),
         "tok projects exactly when dim differs from num_codebooks * log2(codebook_size)"),
    ],
    "ResidualVQ": [
        ("codebook_size", lambda s, o: len(set(s)) == 1, "tok's levels share one codebook size"),
        ("codebook_dim", lambda c, o: c == o["dim"] or o["num_quantizers"] == 1,
         "theirs project once around all levels, tok projects each level; use codebook_dim = "
         "dim (or num_quantizers=1)"),
        ("beam_size", lambda b, o: (b or 0) <= 1, "tok quantizes greedily, level by level"),
        ("eval_beam_size", lambda b, o: (b or 0) <= 1, "tok quantizes greedily, level by level"),
    ],
}
# fmt: on


def reverse_bits(indices: Tensor, bits: int) -> Tensor:
    """LFQ indices in the other library's numbering: the ``bits`` low bits of each index in
    reverse order, as int64 (vector-quantize-pytorch: first channel = most significant bit;
    tok: least). Its own inverse."""
    shifts = torch.arange(bits, device=indices.device)
    ones = (indices.long().unsqueeze(-1) >> shifts) & 1
    return (ones.flip(-1) << shifts).sum(-1)


def from_vector_quantize_pytorch(
    source: nn.Module | Mapping[str, Tensor],
    *,
    kind: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    restart_after: int | None = None,
) -> Quantizer:
    """The tok quantizer equivalent to a vector-quantize-pytorch quantizer.

    :param source: a ``VectorQuantize``, ``FSQ``, ``LFQ``, ``ResidualVQ`` or
        ``GroupedResidualVQ`` module (recognised by class name, subclasses included), or
        its ``state_dict()``; the package need not be importable for a state dict.
    :param kind: with a state dict: the class name, one of :data:`KINDS`.
    :param kwargs: with a state dict: the keyword arguments their constructor was given.
    :param restart_after: tok's dead-code restart for VQ-based kinds (a code unused for
        that many training steps is re-seeded); their ``threshold_ema_dead_code`` rule
        differs and is not carried over, so restart is off unless given.
    :returns: a :class:`tok.Quantizer` (``fsq``, ``lfq``, ``vq``, ``rvq`` or ``mgvq``; see
        the module docstring) on the device of ``source``'s tensors, in the module's
        train/eval mode (train mode for a state dict). On the same channel-last input
        ``(b, ..., dim)`` in eval mode, its ``quantized`` equals their quantized output and
        its int64 ``(b, ..., s)`` ``indices`` equal theirs after the module docstring's
        mapping (VQ kinds: except at exact near-ties, within float32 rounding, between
        two codes: theirs rank ``sqrt(|x|^2 + |c|^2 - 2 x·c)``, tok ``|c|^2 - 2 x·c``).
    :raises ConfigError: an option with no tok equivalent (the message names it and says
        what tok does), an unknown argument or kind, a missing required argument, or a
        state dict without a tensor it needs or with one of another shape.

    Their defaults are carried over where tok's differ: ``VectorQuantize`` decay 0.8 and
    commitment weight 1.0, ``LFQ`` commitment weight 0. Not carried over, because tok has
    no equivalent and they change only how training moves (document them in your run):
    the rotation trick (tok: straight-through), dead-code replacement, ``freeze_codebook``
    (keep the tok quantizer in eval mode: commitment loss and gradients, no update),
    ``quant_grad_frac`` (tok: 0), ``frac_per_sample_entropy`` (tok: all positions), and
    their ``LFQ`` forward's ``inv_temperature`` (tok's is an attribute, default 100 as
    theirs). A ``learnable_codebook`` without EMA becomes ``ema=False`` with
    ``codebook_weight`` = their commitment weight (the same gradients). A projection
    without bias gets a zero bias, learned from there. tok has no masking or ``lens``.
    """
    if isinstance(source, nn.Module):
        if kwargs is not None:
            raise ConfigError("kwargs= is for a state dict; tok reads a module's options off it")
        found = next((c.__name__ for c in type(source).__mro__ if c.__name__ in KINDS), None)
        if found is None:
            raise ConfigError(
                f"cannot convert a {type(source).__name__} module: tok converts "
                f"vector-quantize-pytorch's {', '.join(KINDS)}"
            )
        if kind is not None and kind != found:
            raise ConfigError(f"kind={kind!r} but the module is a {found} (tok reads its kind)")
        kind, state = found, source.state_dict()
        tensors = [*source.parameters(), *source.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
    elif isinstance(source, Mapping):
        if kind not in KINDS:
            raise ConfigError(
                f"kind={kind!r}: with a state dict, name its class; tok converts {', '.join(KINDS)}"
            )
        state, device = dict(source), torch.device("cpu")
        device = next((t.device for t in state.values() if isinstance(t, Tensor)), device)
    else:
        raise ConfigError(
            f"cannot convert a {type(source).__name__}: give a vector-quantize-pytorch "
            f"module or its state dict"
        )
    module = source if isinstance(source, nn.Module) else None
    given = dict(kwargs or {})
    if restart_after is not None and kind in ("FSQ", "LFQ"):
        raise ConfigError(f"restart_after={restart_after!r}: {kind} has no codebook to restart")
    convert = {"FSQ": _fsq, "LFQ": _lfq, "VectorQuantize": _vector_quantize}.get(kind)
    if convert is not None:
        q = convert(module, given, state, restart_after)
    elif kind == "ResidualVQ":
        q = _residual(module, given, state, restart_after, prefix="")
    else:
        q = _grouped(module, given, state, restart_after)
    q.to(device)
    return q.train(module.training if module is not None else True)


# reading and checking options ---------------------------------------------


def _read(module: nn.Module, kind: str, name: str) -> Any:
    """Their argument ``name`` as ``module`` holds it."""
    how = _READ[kind].get(name, name)
    if callable(how):
        return how(module)
    value: Any = module
    for part in how.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    if value is None and kind == "VectorQuantize":
        value = getattr(getattr(module, "_codebook", None), name, None)
    default = _DEFAULTS[kind].get(name)  # for an attribute older versions do not have
    return default if value is None and default is not _REQUIRED else value


def _options(kind: str, module: nn.Module | None, given: dict[str, Any]) -> dict[str, Any]:
    """Their options by their argument names, read off ``module`` or ``given`` + defaults."""
    names = [*_DEFAULTS[kind], *_OFF[kind]]
    if module is not None:
        return {name: _read(module, kind, name) for name in names}
    unknown = sorted(set(given) - set(names) - _IGNORED[kind])
    if unknown:
        known = ", ".join(sorted({*names, *_IGNORED[kind]}))
        raise ConfigError(
            f"{kind} argument {unknown[0]!r} is unknown to tok's converter (it knows {known})"
        )
    options = {name: given.get(name, _DEFAULTS[kind].get(name)) for name in names}
    missing = [name for name, value in options.items() if value is _REQUIRED]
    if missing:
        raise _required(kind, missing[0])
    return options


def _required(kind: str, name: str) -> ConfigError:
    return ConfigError(f"{kind} needs {name}= in kwargs: tok cannot convert without it")


def _take(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ConfigError(
            f"the state dict has no {key!r}, which tok needs: do kind and kwargs match it?"
        )
    return state[key]


def _check(kind: str, options: dict[str, Any]) -> None:
    """Refuse, in one line, the first option tok has no equivalent for."""
    off = [(name, lambda v, o: not v, instead) for name, instead in _OFF[kind].items()]
    for name, fine, instead in off + _RULES[kind]:
        value = options[name]
        if not fine(value, options):
            plain = value is None or isinstance(value, (bool, int, float, str, tuple, list))
            shown = repr(value) if plain else type(value).__name__
            raise ConfigError(f"{kind}({name}={shown}) has no equivalent in tok: {instead}")


def _vq_options(module: nn.Module | None, given: dict[str, Any], *, shared: bool = False):
    """Their ``VectorQuantize`` options (resolved, checked) and tok's VQ options for them."""
    o = _options("VectorQuantize", module, given)
    if o["codebook_dim"] is None:
        o["codebook_dim"] = o["dim"]
    derived = o["directional_reparam"] or o["vq_bridge"] is not None
    if o["learnable_codebook"] is None:
        o["learnable_codebook"] = derived
    if o["ema_update"] is None:
        o["ema_update"] = not derived
    if shared:  # their ResidualVQ sets it on shared levels: one EMA step per forward
        o["manual_ema_update"] = False
    _check("VectorQuantize", o)
    same = ("codebook_size", "codebook_dim", "decay", "eps", "commitment_weight", "kmeans_iters")
    ours = {name: o[name] for name in same}
    ours.update(ema=bool(o["ema_update"]), cosine=bool(o["use_cosine_sim"]))
    if not o["ema_update"]:
        ours["codebook_weight"] = o["commitment_weight"]
    return o, ours


# building tok's quantizer and copying the state --------------------------------


# tok's VQ state -> their Codebook's: (heads, k, c), (heads, k), (heads, k, c), scalar
_CODEBOOK_STATE = {"codebook": "embed", "cluster_size": "cluster_size", "embed_sum": "embed_avg",
                   "initted": "initted"}  # fmt: skip


def _load(q: Quantizer, state: dict, books: list, projections: Sequence = ()) -> Quantizer:
    """Copy their tensors into ``q``: ``books`` are ``(tok prefix, their Codebook's prefix,
    head)``, ``projections`` ``(tok prefix, their prefix)`` of Linear layers."""
    target = q.state_dict()
    new: dict[str, Tensor] = {}
    for ours, theirs in projections:
        if ours + "weight" in target:
            new[ours + "weight"] = _take(state, theirs + "weight")
            bias = state.get(theirs + "bias")  # absent with projection_has_bias=False
            new[ours + "bias"] = torch.zeros_like(target[ours + "bias"]) if bias is None else bias
    for ours, theirs, head in books:
        for tok_name, their_name in _CODEBOOK_STATE.items():
            value = _take(state, theirs + their_name)
            new[ours + tok_name] = value[head] if value.ndim else value
    for key, value in new.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConfigError(
                f"tensor for {key!r} has shape {tuple(value.shape)}, tok expects "
                f"{tuple(target[key].shape)}: does the state dict match kwargs?"
            )
    q.load_state_dict({**target, **new})
    return q


def _finish(ours: dict, state: dict, books: list, restart_after: int | None) -> dict:
    """tok's VQ options plus ``restart_after`` and ``kmeans_init``: whether a codebook still
    waits for its k-means (``initted`` false), whatever their module or kwargs say."""
    pending = not all(bool(_take(state, p + "initted")) for _, p, _ in books)
    return {**ours, "kmeans_init": pending, "restart_after": restart_after}


def _linear_pair(ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}{name}.", f"{theirs}{name}.") for name in ("project_in", "project_out")]


def _fsq(module, given, state, restart_after) -> Quantizer:
    o = _options("FSQ", module, given)
    _check("FSQ", o)
    levels = [int(v) for v in o["levels"]]
    q = create_quantizer("fsq", levels=levels, dim=o["dim"], num_codebooks=o["num_codebooks"])
    return _load(q, state, [], _linear_pair("", ""))


def _lfq(module, given, state, restart_after) -> Quantizer:
    o = _options("LFQ", module, given)
    if o["dim"] is None and o["codebook_size"] is None:
        raise _required("LFQ", "dim= or codebook_size")
    size = o["codebook_size"] if o["codebook_size"] is not None else 2 ** o["dim"]
    o["bits"] = int(size).bit_length() - 1
    if o["dim"] is None:
        o["dim"] = o["bits"] * o["num_codebooks"]
    if o["has_projections"] is None:
        o["has_projections"] = o["dim"] != o["bits"] * o["num_codebooks"]
    _check("LFQ", o)
    q = create_quantizer(
        "lfq",
        codebook_size=size,
        dim=o["dim"],
        num_codebooks=o["num_codebooks"],
        entropy_weight=o["entropy_loss_weight"],
        commitment_weight=o["commitment_loss_weight"],
        diversity_gamma=o["diversity_gamma"],
        codebook_scale=o["codebook_scale"],
    )
    return _load(q, state, [], _linear_pair("", ""))


def _vector_quantize(module, given, state, restart_after) -> Quantizer:
    o, ours = _vq_options(module, given)
    heads, separate = o["heads"], bool(o["separate_codebook_per_head"])
    if heads == 1:
        books = [("", "_codebook.", 0)]
        q = create_quantizer("vq", dim=o["dim"], **_finish(ours, state, books, restart_after))
        return _load(q, state, books, _linear_pair("", ""))
    books = [(f"vqs.{g}.", "_codebook.", g) for g in range(heads if separate else 1)]
    ours = _finish(ours, state, books, restart_after)
    q = create_quantizer("mgvq", dim=o["dim"], groups=heads, shared_codebook=not separate, **ours)
    return _load(q, state, books)


def _rvq_options(module: nn.Module | None, given: dict[str, Any]):
    """Their ``ResidualVQ`` options and the options of its levels (``VectorQuantize``)."""
    mine = {*_DEFAULTS["ResidualVQ"], *_OFF["ResidualVQ"], *_IGNORED["ResidualVQ"]}
    own = {k: v for k, v in given.items() if k in mine}
    o = _options("ResidualVQ", module, own)
    size = o["codebook_size"]
    sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * (o["num_quantizers"] or 1)
    o["codebook_size"], o["num_quantizers"] = sizes, o["num_quantizers"] or len(sizes)
    if o["codebook_dim"] is None:
        o["codebook_dim"] = o["dim"]
    o["quantize_dropout"] = bool(o["quantize_dropout"]) and o["num_quantizers"] > 1
    _check("ResidualVQ", o)
    level_given = {k: v for k, v in given.items() if k not in own}
    level_given.update(dim=o["codebook_dim"], codebook_size=sizes[0])
    layer = module.layers[0] if module is not None else None
    _, ours = _vq_options(layer, level_given, shared=bool(o["shared_codebook"]))
    ours["codebook_dim"] = o["codebook_dim"]
    return o, ours


def _residual(module, given, state, restart_after, *, prefix: str) -> Quantizer:
    o, ours = _rvq_options(module, given)
    depth, shared = o["num_quantizers"], bool(o["shared_codebook"])
    books = [(f"levels.{i}.", f"{prefix}layers.{i}._codebook.", 0) for i in range(depth)]
    books = books[:1] if shared else books
    ours = _finish(ours, state, books, restart_after)
    q = create_quantizer("rvq", dim=o["dim"], depth=depth, shared_codebook=shared, **ours)
    return _load(q, state, books, _linear_pair("levels.0.", prefix))


def _grouped(module, given, state, restart_after) -> Quantizer:
    if module is not None:
        dim, groups, first = module.dim, module.groups, module.rvqs[0]
    else:
        if "dim" not in given:
            raise _required("GroupedResidualVQ", "dim")
        dim, groups, first = given["dim"], given.get("groups", 1), None
    rest = {k: v for k, v in given.items() if k not in ("dim", "groups")}
    if groups == 1:
        return _residual(first, {**rest, "dim": dim}, state, restart_after, prefix="rvqs.0.")
    o, ours = _rvq_options(first, {**rest, "dim": dim // groups})
    if o["num_quantizers"] != 1:
        raise ConfigError(
            f"GroupedResidualVQ(groups={groups}) with num_quantizers={o['num_quantizers']} has "
            f"no equivalent in tok: tok has groups of one VQ each (mgvq, num_quantizers=1) "
            f"and residual VQ in one group (rvq, groups=1), not both at once"
        )
    books = [(f"vqs.{g}.", f"rvqs.{g}.layers.0._codebook.", 0) for g in range(groups)]
    q = create_quantizer(
        "mgvq", dim=dim, groups=groups, **_finish(ours, state, books, restart_after)
    )
    projections = [p for g in range(groups) for p in _linear_pair(f"vqs.{g}.", f"rvqs.{g}.")]
    return _load(q, state, books, projections)
