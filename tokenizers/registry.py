"""Plugin loading and the registries of quantizers, architectures and datasets.

Plugins come from the ``tok`` entry-point group (the built-in ones too) and
from :func:`register_plugin`. Each entry point is loaded in its own
``try``/``except``: a broken plugin gives one :class:`PluginWarning` naming
the distribution, its version and the cause, is listed as ``failed`` by
``tok plugins``, and everything else keeps working. ``TOK_STRICT_PLUGINS=1``
re-raises instead. ``TOK_PLUGINS=a,b`` loads only the named entry points
(an allow-list; ``TOK_PLUGINS=`` with nothing loads none).
``TOK_TRACE_HOOKS=1`` prints each hook call to stderr.

As pluggy's manual describes: each plugin's hook implementations are checked
against tok's hook specifications when it loads (a misspelled hook such as
``register_quantizer`` marks that plugin failed instead of loading "ok" and
providing nothing), and each implementation is called with only the
arguments it names, so a hook specification can gain arguments without
breaking installed plugins.

Why this module is longer than 500 lines: loading plugins and the registries
they fill share one state (what loaded, what failed, who owns each name), and
the messages that explain a missing name (closest match, ``TOK_PLUGINS``, a
distribution that is not installed) need all of it; split, each half would
reach into the other's private state.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import sys
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, PluginError, UnknownNameError

__all__ = [
    "PluginWarning",
    "PluginInfo",
    "Entry",
    "Registry",
    "KINDS",
    "registry",
    "plugins",
    "register_plugin",
    "unregister_plugin",
    "reload_plugins",
    "get_quantizer",
    "list_quantizers",
    "get_architecture",
    "list_architectures",
    "get_dataset",
    "list_datasets",
    "get_loss",
    "list_losses",
    "provenance",
    "missing_plugin",
    "left_out",
    "allow_list_note",
    "DISTRIBUTION",
]

ENTRY_POINT_GROUP = "tok"
#: tok's own distribution on PyPI (the import name, the command and the entry-point
#: group are ``tok``; the distribution name ``tok`` belongs to an unrelated project)
DISTRIBUTION = "tok-vision"
# registry kind -> (hook name, singular noun used in messages, CLI command that lists it)
KINDS: dict[str, tuple[str, str, str]] = {
    "quantizers": ("register_quantizers", "quantizer", "tok quantizers"),
    "bottlenecks": ("register_bottlenecks", "bottleneck", "tok plugins"),
    "architectures": ("register_architectures", "architecture", "tok plugins"),
    "datasets": ("register_datasets", "dataset", "tok plugins"),
    "losses": ("register_losses", "loss", "tok plugins"),
}


class PluginWarning(UserWarning):
    """A plugin failed to load or register; the others keep working."""


@dataclass
class PluginInfo:
    """What ``tok plugins`` shows about one plugin.

    ``source`` is ``"builtin"`` for tok's own plugins, ``"entry point"`` for an
    installed distribution and ``"registered"`` for :func:`register_plugin`.
    ``status`` is ``"ok"`` or ``"failed"`` (then ``error`` says why).
    """

    name: str
    version: str | None = None
    distribution: str | None = None
    source: str = "entry point"
    status: str = "ok"
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "distribution": self.distribution,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "provides": self.provides,
        }


@dataclass(frozen=True)
class Entry:
    """One registered name: the object, the plugin that owns it, its aliases."""

    name: str
    obj: Any
    owner: str
    aliases: tuple[str, ...] = ()


class Registry:
    """Names → registered classes for one kind of component, with owners."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.noun = KINDS[kind][1] if kind in KINDS else kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._conflicts: dict[str, list[str]] = {}

    def add(self, obj: Any, *, name: str, owner: str, aliases: Iterable[str] = ()) -> None:
        """Record ``obj`` under ``name`` (and ``aliases``) as owned by ``owner``."""
        aliases = tuple(aliases)
        for key in (name, *aliases):
            holder = self._holder(key)
            if holder is not None:
                owners = self._conflicts.setdefault(key, [holder])
                owners.append(owner)
                warnings.warn(
                    f"tok: {self.noun} name {key!r} is registered by both plugin "
                    f"{holder!r} and plugin {owner!r}; the name is unusable until one is removed",
                    PluginWarning,
                    stacklevel=2,
                )
        self._entries.setdefault(name, Entry(name=name, obj=obj, owner=owner, aliases=aliases))
        for alias in aliases:
            self._aliases.setdefault(alias, name)

    def _holder(self, key: str) -> str | None:
        if key in self._entries:
            return self._entries[key].owner
        if key in self._aliases:
            return self._entries[self._aliases[key]].owner
        return None

    def drop_owner(self, owner: str) -> None:
        """Forget everything ``owner`` registered (used when its hook fails)."""
        for name in [n for n, e in self._entries.items() if e.owner == owner]:
            del self._entries[name]
        self._aliases = {a: n for a, n in self._aliases.items() if n in self._entries}

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` for ``name`` or an alias; raises a :class:`TokError`."""
        if name in self._conflicts:
            owners = " and ".join(repr(o) for o in self._conflicts[name])
            raise DuplicateNameError(
                f"{self.noun} {name!r} is registered by more than one plugin ({owners}); "
                f"uninstall or disable one of them (TOK_PLUGINS=... limits which plugins load)"
            )
        key = self._aliases.get(name, name)
        if key not in self._entries:
            raise UnknownNameError(self._unknown_message(name))
        return self._entries[key]

    def get(self, name: str) -> Any:
        """The object registered as ``name``."""
        return self.entry(name).obj

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names (not aliases) matching the glob ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def conflicts(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._conflicts.items()}

    def name_of(self, obj: Any) -> str | None:
        """The registered name of ``obj`` (a class or an instance of one)."""
        cls = obj if isinstance(obj, type) else type(obj)
        for entry in self._entries.values():
            if entry.obj is cls:
                return entry.name
        return None

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def _unknown_message(self, name: str) -> str:
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        # a transposition ('fqs' → 'fsq') is the likeliest typo: rank anagrams first
        close.sort(key=lambda c: sorted(c) != sorted(name))
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(self.names()) or "none"
        command = KINDS.get(self.kind, ("", "", "tok plugins"))[2]
        return (
            f"unknown {self.noun} {name!r}{hint} (available: {listing}; `{command}` lists them)"
            + allow_list_note()
        )


class _State:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.registries = {kind: Registry(kind) for kind in KINDS}
        self.left_out: list[str] = []  # installed entry points TOK_PLUGINS leaves out


_lock = threading.RLock()
_state: _State | None = None
_extra_plugins: list[tuple[object, str]] = []


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _fail(state: _State, info: PluginInfo, exc: BaseException, what: str) -> None:
    dist = f"{info.distribution} {info.version}" if info.distribution else "no distribution"
    info.status = "failed"
    info.error = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, always
    if _env_flag("TOK_STRICT_PLUGINS"):
        raise PluginError(f"plugin {info.name!r} ({dist}) failed to {what}: {info.error}") from exc
    warnings.warn(
        f"tok: plugin {info.name!r} ({dist}) failed to {what} and was skipped: {info.error}",
        PluginWarning,
        stacklevel=3,
    )


def _is_builtin(dist_name: str | None) -> bool:
    return dist_name is not None and _normalise(dist_name) == _normalise(DISTRIBUTION)


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Tok_Vision`` == ``tok-vision``)."""
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def _unknown_hooks(state: _State, plugin: object) -> list[str]:
    """Names of the hook implementations of ``plugin`` that match no tok hook."""
    unknown = []
    for caller in state.pm.get_hookcallers(plugin) or []:
        if caller.spec is not None:
            continue
        impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
        if any(not i.optionalhook for i in impls):
            unknown.append(caller.name)
    return unknown


def _register(state: _State, plugin: object, info: PluginInfo) -> None:
    """Register ``plugin`` with pluggy and check its hooks against tok's specs.

    pluggy itself refuses an implementation that asks for an argument its
    spec does not have; a hook name tok has no spec for is refused here.
    """
    state.pm.register(plugin, name=info.name)
    unknown = _unknown_hooks(state, plugin)
    if unknown:
        state.pm.unregister(plugin)
        hooks = sorted(spec for spec, _, _ in KINDS.values())
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, hooks, n=1, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PluginError(
            f"{', '.join(hints)} {'is not a tok hook' if len(unknown) == 1 else 'are not tok hooks'}"
            f"; tok's hooks are {', '.join(hooks)}"
        )


def _allowed() -> set[str] | None:
    """The entry-point names ``TOK_PLUGINS`` allows (``None``: it is not set)."""
    allow = os.environ.get("TOK_PLUGINS")
    return None if allow is None else {p.strip() for p in allow.split(",") if p.strip()}


def allow_list_note() -> str:
    """What to add to a "not found" message while ``TOK_PLUGINS`` limits the plugins."""
    if _allowed() is None:
        return ""
    return f"; TOK_PLUGINS={os.environ['TOK_PLUGINS']} limits which plugins load"


def _load_entry_points(state: _State) -> None:
    allowed = _allowed()
    found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if allowed is not None:
        state.left_out = sorted({ep.name for ep in found} - allowed)
        unknown = sorted(allowed - {ep.name for ep in found})
        if unknown:
            warnings.warn(
                f"tok: TOK_PLUGINS names {', '.join(map(repr, unknown))}, which no installed "
                f"distribution provides (installed plugins: {', '.join(sorted({e.name for e in found}))})",
                PluginWarning,
                stacklevel=3,
            )
    for ep in found:
        if allowed is not None and ep.name not in allowed:
            continue
        if ep.name in state.infos:  # the same distribution seen twice on sys.path
            continue
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        info = PluginInfo(
            name=ep.name,
            version=dist.version if dist is not None else None,
            distribution=dist_name,
            source="builtin" if _is_builtin(dist_name) else "entry point",
        )
        state.infos[ep.name] = info
        try:
            _register(state, ep.load(), info)
        except Exception as exc:  # noqa: BLE001 - any plugin failure is isolated
            _fail(state, info, exc, "load")


def _hook_arguments(hook_name: str, register: Any) -> dict[str, Any]:
    """Everything tok offers a ``hook_name`` implementation; each takes what it names."""
    return {"register": register}


def _collect(state: _State) -> None:
    trace = _env_flag("TOK_TRACE_HOOKS")
    for kind, (hook_name, _, _) in KINDS.items():
        registry = state.registries[kind]
        hook = getattr(state.pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order (pluggy calls LIFO)
            owner = impl.plugin_name
            info = state.infos.setdefault(owner, PluginInfo(name=owner, source="registered"))
            if info.status == "failed":
                continue

            def register(
                obj: Any,
                name: str | None = None,
                aliases: Iterable[str] = (),
                *,
                _owner: str = owner,
                _registry: Registry = registry,
            ) -> None:
                key = name or getattr(obj, "name", None) or obj.__name__.lower()
                _registry.add(obj, name=key, owner=_owner, aliases=aliases)

            if trace:
                print(f"tok: hook {hook_name}() -> plugin {owner!r}", file=sys.stderr)
            offered = _hook_arguments(hook_name, register)
            try:
                # only the arguments the implementation names (pluggy's own calling rule)
                impl.function(**{arg: offered[arg] for arg in impl.argnames})
            except Exception as exc:  # noqa: BLE001
                registry.drop_owner(owner)
                _fail(state, info, exc, f"run {hook_name}")
    for info in state.infos.values():
        info.provides = {
            kind: [e.name for e in reg.entries() if e.owner == info.name]
            for kind, reg in state.registries.items()
        }
        info.provides = {k: v for k, v in info.provides.items() if v}
        if info.status == "failed":
            for reg in state.registries.values():
                reg.drop_owner(info.name)


def _get_state() -> _State:
    global _state
    with _lock:
        if _state is None:
            state = _State()
            _load_entry_points(state)
            for obj, name in _extra_plugins:
                info = state.infos.setdefault(name, PluginInfo(name=name, source="registered"))
                try:
                    _register(state, obj, info)
                except Exception as exc:  # noqa: BLE001 - isolated like an entry point
                    _fail(state, info, exc, "load")
            _collect(state)
            _state = state
        return _state


def reload_plugins() -> None:
    """Forget the loaded plugins; the next look-up loads them again."""
    global _state
    with _lock:
        _state = None


def register_plugin(plugin: object, *, name: str) -> None:
    """Register an in-process plugin (a module or object with ``@hookimpl`` functions)."""
    with _lock:
        _extra_plugins.append((plugin, name))
        reload_plugins()


def unregister_plugin(name: str) -> None:
    """Remove a plugin added with :func:`register_plugin`."""
    with _lock:
        _extra_plugins[:] = [(p, n) for p, n in _extra_plugins if n != name]
        reload_plugins()


def registry(kind: str) -> Registry:
    """The :class:`Registry` for ``kind`` (``quantizers``, ``architectures``, ``datasets``)."""
    return _get_state().registries[kind]


def plugins() -> list[PluginInfo]:
    """Every plugin tok knows about, loaded or failed, sorted by name."""
    return sorted(_get_state().infos.values(), key=lambda i: i.name)


def left_out() -> list[str]:
    """The installed plugins (entry-point names) that ``TOK_PLUGINS`` keeps from loading."""
    return list(_get_state().left_out)


def get_quantizer(name: str) -> type:
    """The quantizer class registered as ``name``."""
    return registry("quantizers").get(name)


def list_quantizers(pattern: str = "*") -> list[str]:
    """Names of the registered quantizers matching the glob ``pattern``."""
    return registry("quantizers").names(pattern)


def get_architecture(name: str) -> type:
    """The architecture class registered as ``name``."""
    return registry("architectures").get(name)


def list_architectures(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching the glob ``pattern``."""
    return registry("architectures").names(pattern)


def get_dataset(name: str) -> type:
    """The dataset class registered as ``name``."""
    return registry("datasets").get(name)


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered datasets matching the glob ``pattern``."""
    return registry("datasets").names(pattern)


def get_loss(name: str) -> type:
    """The training-loss class registered as ``name``."""
    return registry("losses").get(name)


def list_losses(pattern: str = "*") -> list[str]:
    """Names of the registered training losses matching the glob ``pattern``."""
    return registry("losses").names(pattern)


def provenance(kind: str, name: str) -> dict[str, str | None]:
    """Which plugin registered ``name`` (a ``kind`` component) and from which distribution.

    Returns ``{"plugin", "distribution", "version"}`` (``None`` where unknown);
    ``tokenizer.json`` and token headers record it, so that a run whose plugin
    is gone can say what to install.
    """
    entry = registry(kind).entry(name)
    info = _get_state().infos.get(entry.owner)
    return {
        "plugin": entry.owner,
        "distribution": info.distribution if info else None,
        "version": info.version if info else None,
    }


def missing_plugin(kind: str, name: str, recorded: Any) -> str | None:
    """Why ``name`` (a ``kind`` component) cannot be found, if it cannot and
    ``recorded`` (what :func:`provenance` said when it was saved) names a
    distribution that is not installed, failed to load, or is installed in
    another version: e.g. ``quantizer 'bsq' comes from tok-bsq 0.1.0, which is
    not installed; pip install 'tok-bsq==0.1.0' brings it back``. ``None`` when
    the name is registered, nothing was recorded, or the recorded release is
    installed (then the usual unknown-name message applies).
    """
    if name in registry(kind) or not isinstance(recorded, dict):
        return None
    dist, version = recorded.get("distribution"), recorded.get("version")
    if not isinstance(dist, str) or not dist:
        return None
    noun = KINDS[kind][1]
    release = f"{dist} {version}" if version else dist
    pin = f"=={version}" if version else ""
    plugin = recorded.get("plugin")
    if isinstance(plugin, str) and plugin in _get_state().left_out:
        return (
            f"{noun} {name!r} comes from plugin {plugin!r} ({release}), which "
            f"TOK_PLUGINS={os.environ.get('TOK_PLUGINS', '')} leaves out"
        )
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return f"{noun} {name!r} comes from {release}, which is not installed; pip install '{dist}{pin}' brings it back"
    failed = [
        i
        for i in _get_state().infos.values()
        if i.status == "failed"
        and i.distribution
        and _normalise(i.distribution) == _normalise(dist)
    ]
    if failed:
        return (
            f"{noun} {name!r} comes from {release}, whose plugin {failed[0].name!r} failed to "
            f"load ({failed[0].error}); `tok plugins` shows it"
        )
    if version and installed != version:
        return (
            f"{noun} {name!r} comes from {release}, but {dist} {installed} is installed and does "
            f"not provide it; pip install '{dist}{pin}' brings it back"
        )
    return None
