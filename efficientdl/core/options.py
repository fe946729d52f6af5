"""Options declared once, with their type and range.

An :class:`Option` is the single statement of what a setting accepts.  The recipe
validator asks it for a problem (:meth:`Option.problem`), the command line uses it as
an ``argparse`` type (:meth:`Option.parse`), and the Python API checks its arguments
with it (:meth:`Option.check`), so that the three can never disagree.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from ..errors import RecipeError


@dataclass(frozen=True)
class Option:
    """A setting: its type, its range or choices, whether it may be given per layer.

    Attributes:
        name: the key in recipes and the keyword in the API (``"momentum"``).
        kind: ``int``, ``float`` (ints are accepted), ``str`` or ``bool``.
        default: the value when the setting is not given.
        low, high: the closed range (``None``: unbounded on that side).
        low_open, high_open: exclude the bound itself.
        choices: the accepted strings, for ``kind=str``.
        per_layer: the value may also be a mapping ``{layer name or type: value}``.
        help: one line for ``--help`` and docs.
    """

    name: str
    kind: type = float
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    per_layer: bool = False
    help: str = ""

    def expected(self) -> str:
        """What the option accepts, in words (``"a number in [0, 1)"``)."""
        if self.kind is bool:
            return "true or false"
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        noun = "an integer" if self.kind is int else "a number"
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            return f"{noun} {'>' if self.low_open else '≥'} {self.low:g}"
        if self.low is None:
            return f"{noun} {'<' if self.high_open else '≤'} {self.high:g}"
        return (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")

    def _scalar_problem(self, value: Any) -> str | None:
        if self.kind is bool:
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if self.kind is str:
            if self.choices is not None and value not in self.choices:
                return f"unknown {self.name} {value!r} (expected {self.expected()})"
            return None if isinstance(value, str) else f"expected a string, got {value!r}"
        numeric = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or \
                (isinstance(value, float) and not math.isfinite(value)):
            return f"expected {self.expected()}, got {value!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"expected {self.expected()}, got {value!r}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"expected {self.expected()}, got {value!r}"
        return None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or ``None`` when it is acceptable."""
        if self.per_layer and isinstance(value, dict):
            if not value:
                return "empty mapping"
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"layer key {key!r} must be a name"
                msg = self._scalar_problem(item)
                if msg:
                    return f"'{key}': {msg}"
            return None
        return self._scalar_problem(value)

    def check(self, value: Any, where: str = "") -> Any:
        """Return ``value`` if acceptable.

        Raises:
            RecipeError: ``"WHERE: NAME: expected …, got …"`` (``"WHERE: unknown NAME …"`` for a choice).
        """
        msg = self.problem(value)
        if msg:
            prefix = f"{where}: " if where else ""
            raise RecipeError(f"{prefix}{msg}" if msg.startswith("unknown ") else f"{prefix}{self.name}: {msg}")
        return value

    def parse(self, text: str) -> Any:
        """Convert a command-line string (an ``argparse`` ``type=``).

        Raises:
            argparse.ArgumentTypeError: not of the kind, or out of range.
        """
        value: Any = text
        if self.kind is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {self.expected()}, got {text!r}") from None
        elif self.kind is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {self.expected()}, got {text!r}") from None
        elif self.kind is bool:
            if text.lower() not in ("true", "false"):
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            value = text.lower() == "true"
        msg = self._scalar_problem(value)
        if msg:
            raise argparse.ArgumentTypeError(msg)
        return value

    def __call__(self, text: str) -> Any:  # usable directly as ``type=OPTION``
        return self.parse(text)

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.name


def check_options(options: dict[str, Option], values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Check a mapping of settings against declared options; unknown keys are refused.

    Returns:
        ``values`` with every declared default filled in.

    Raises:
        RecipeError: an unknown key (the known ones listed) or a value out of range.
    """
    prefix = f"{where}: " if where else ""
    for key, value in values.items():
        if key not in options:
            raise RecipeError(f"{prefix}unknown option {key!r} (known: {', '.join(options)})")
        options[key].check(value, where)
    return {name: values.get(name, opt.default) for name, opt in options.items()}
