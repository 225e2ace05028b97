"""Registries: the kinds a configuration names -- filters, embedders, index kinds -- looked up by name.

A config names a kind one of two ways:

- a name: a built-in (`FILTERS.names()`), or one a module registered with `@FILTERS.register("name")`
  once that module has been imported (library use, or a package that registers in its `__init__`);
- a path, ``package.module:Class``, to the user's own class: imported when the config is checked, the
  same way ``selector.recaption_hook`` is loaded. The module must be importable where the run goes,
  in Ray's workers too (PYTHONPATH, or the job's runtime environment).

Built-ins are listed by their paths and imported on first use, so checking a config never loads
torch or faiss, and the modules that define them can import `curator.config` without a cycle.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: A path to user code: dotted module, a colon, a dotted attribute.
PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class RegistryError(ValueError):
    """A name or path that names no kind; the message says what the registry has and how to add one."""


class Registry:
    """Kinds of one sort by name: the built-ins (by path, imported when first used) and registered ones."""

    def __init__(self, what: str, builtins: dict[str, str]) -> None:
        self.what = what  # what one is called in messages
        self._builtins = dict(builtins)
        self._registered: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make a class known by `name` (in this process: the module must be imported first)."""
        if not name or ":" in name:
            raise ValueError(f"{self.what} names must be non-empty and have no ':', got {name!r}")

        def deco(obj: T) -> T:
            known = self._registered.get(name)
            if name in self._builtins or (known is not None and qualname(known) != qualname(obj)):
                raise ValueError(f"{self.what} {name!r} is already registered "
                                 f"({self._builtins.get(name) or qualname(known)}); pick another name")
            self._registered[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        """Built-in names first (in their order), then registered ones."""
        return [*self._builtins, *(n for n in self._registered if n not in self._builtins)]

    def get(self, name: str) -> Any:
        """The class `name` names: a built-in, a registered name, or a ``package.module:Class`` path."""
        if name in self._registered:
            return self._registered[name]
        if name in self._builtins:
            return load_path(self._builtins[name], f"built-in {self.what} {name!r}")
        if PATH.match(name or ""):
            return load_path(name, f"{self.what} {name!r}")
        raise RegistryError(self.unknown(name))

    def unknown(self, name: str, also: tuple[str, ...] = (), where: str = "") -> str:
        kinds = ", ".join([*also, *self.names()])
        own = "or your own class as 'package.module:Class' (docs/extending.md)"
        if where:
            return f"{where} must be one of {kinds}, {own}; got {name!r}"
        return f"unknown {self.what} {name!r}; use one of {kinds}, {own}"

    def problem(self, name: str, where: str, also: tuple[str, ...] = ()) -> str | None:
        """What is wrong with `name` as the value of the setting `where` (None: it names a kind; `also`:
        values the setting takes besides the registry's, such as "auto")."""
        if name in also:
            return None
        try:
            self.get(name)
        except RegistryError as exc:
            return self.unknown(name, also, where) if not PATH.match(name or "") else f"{where}: {exc}"
        return None


def qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def load_path(path: str, what: str) -> Any:
    """Import ``package.module:Attr`` (the attribute may be dotted), with an error that says what failed."""
    mod, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
    except ImportError as exc:
        raise RegistryError(f"cannot load {what}: {exc} (is the folder that holds {mod.split('.')[0]!r} on "
                            "PYTHONPATH, or the package installed?)") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing: say where
        raise RegistryError(f"cannot load {what}: importing {mod!r} failed with {type(exc).__name__}: {exc}") \
            from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"cannot load {what}: module {mod!r} has no {attr!r}") from None
    return obj


#: Filters and scores (`curator.ops`): `[[filters]] op = NAME`.
FILTERS = Registry("filter", {
    "image_resolution": "curator.ops.image:ImageResolution",
    "aspect_ratio": "curator.ops.image:AspectRatio",
    "caption_length": "curator.ops.text:CaptionLength",
    "caption_words": "curator.ops.text:CaptionWords",
    "language": "curator.ops.language:Language",
})

#: Embedders (`curator.embed`): `embedder.kind = NAME`.
EMBEDDERS = Registry("embedder kind", {
    "clip": "curator.embed.clip:ClipEmbedder",
    "precomputed": "curator.embed.precomputed:PrecomputedEmbedder",
})

#: Index kinds (`curator.index.kinds`): `index.kind = NAME` (or "auto").
INDEX_KINDS = Registry("index kind", {
    "flat": "curator.index.kinds:Flat",
    "hnsw": "curator.index.kinds:HNSW",
    "ivf": "curator.index.kinds:IVF",
    "ivf-pq": "curator.index.kinds:IVFPQ",
    "ivf-pq-sq8": "curator.index.kinds:IVFPQSQ8",
})
