"""Registries: the extension points of the package.

Every kind of extension — a pruning criterion, a quantizer, a file tensor kind, a
runtime kernel, a method of ``edl compare``, a model, a device — joins one
:class:`Registry` under a name, with the options it accepts.  The command line, the
recipe validator and the Python API all read names, choices and option ranges from
the registry, so that adding an entry is a change in one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from ..errors import RecipeError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered extension.

    Attributes:
        name: the registry name (what recipes, the CLI and the API use).
        obj: the registered object (a function or a class).
        options: the options it accepts, by name (:class:`efficientdl.core.options.Option`).
        help: one line saying what it is.
    """

    name: str
    obj: T
    options: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""


class Registry(Generic[T]):
    """A name → extension table that says what it holds in its errors.

    Args:
        kind: what the entries are, for messages (``"pruner"``, ``"file tensor kind"``).

    Example:
        >>> SCORES = Registry("pruning criterion")
        >>> @SCORES.register("magnitude", help="|W|")
        ... def magnitude(weight, context):
        ...     return weight.abs()
        >>> SCORES.names()
        ['magnitude']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, options: Mapping[str, Any] | None = None,
                 help: str = "") -> Any:
        """Register ``obj`` under ``name`` (or, without ``obj``, return a decorator that does).

        Raises:
            ValueError: ``name`` is taken by another object (a programming error).
        """

        def add(target: T) -> T:
            known = self._entries.get(name)
            if known is not None and known.obj is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, target, dict(options or {}), help)
            return target

        return add if obj is None else add(obj)

    def entry(self, name: str, where: str = "") -> Entry[T]:
        """The entry of ``name``.

        Raises:
            RecipeError: no such name; the message lists the known ones.
        """
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            raise RecipeError(f"{prefix}unknown {self.kind} {name!r} (expected one of {', '.join(self.names())})")
        return self._entries[name]

    def get(self, name: str, where: str = "") -> T:
        """The object registered under ``name`` (see :meth:`entry`)."""
        return self.entry(name, where).obj

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        """The registered entries, in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def lookup(table: Mapping[str, Callable[..., Any]], name: str, kind: str, where: str = "") -> Callable[..., Any]:
    """``table[name]`` or a :class:`RecipeError` naming the known keys (for small fixed tables)."""
    if name not in table:
        prefix = f"{where}: " if where else ""
        raise RecipeError(f"{prefix}unknown {kind} {name!r} (expected one of {', '.join(table)})")
    return table[name]
