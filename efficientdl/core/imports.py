"""Import paths ``MODULE:CALLABLE``: parsing, importing, and reading a callable's keywords.

What a user's model (:mod:`efficientdl.models.user`) and a user's data
(:mod:`efficientdl.data.user`) are named by — the convention of ``uvicorn app:main``.
Torch-free; every failure is one :class:`~efficientdl.errors.ModelError` line that
never carries the user code's traceback.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from typing import Any, Callable

from ..errors import ModelError

#: ``package.module:callable`` or ``package.module:Class.method`` (dotted identifiers on both sides)
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def is_import_path(text: Any) -> bool:
    """Whether ``text`` is written as an import path ``MODULE:CALLABLE`` (registry names have no colon).

    Args:
        text: anything; only a string can be an import path.

    Returns:
        ``True`` for a string containing ``:`` (well formed or not: :func:`parse_import_path` says).
    """
    return isinstance(text, str) and ":" in text


def parse_import_path(text: str, what: str = "model") -> tuple[str, str]:
    """Split ``"pkg.mod:build"`` into ``("pkg.mod", "build")``.

    Args:
        text: the import path.
        what: the thing named in error messages (``"model"``, ``"data"``).

    Returns:
        ``(module, attribute)``; the attribute may be dotted (``Class.method``).

    Raises:
        ModelError: not of the form ``MODULE:CALLABLE`` with dotted Python identifiers.
    """
    if not isinstance(text, str) or not IMPORT_PATH.match(text.strip()):
        raise ModelError(f"{what} {text!r}: expected an import path MODULE:CALLABLE such as mypkg.nets:build")
    module, _, attr = text.strip().partition(":")
    return module, attr


def parse_kwargs(text: str, what: str = "--model-kwargs") -> dict[str, Any]:
    """Parse a JSON object of keyword arguments (``'{"width": 16}'``).

    Args:
        text: the JSON text.
        what: the option named in error messages.

    Returns:
        The mapping.

    Raises:
        ModelError: not valid JSON, or not a JSON object.
    """
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{what}: not valid JSON ({e}); expected an object such as '{{\"width\": 16}}'") from None
    if not isinstance(value, dict):
        raise ModelError(f"{what}: expected a JSON object such as '{{\"width\": 16}}', got {text!r}")
    return value


def import_callable(spec: str, what: str = "model") -> Callable[..., Any]:
    """Import the module of ``spec`` and return its callable (the current directory searched first).

    Args:
        spec: ``MODULE:CALLABLE``.
        what: the thing named in error messages.

    Returns:
        The callable.

    Raises:
        ModelError: a malformed path, a module that does not exist or fails to import, a missing
            attribute, or one that is not callable (one line each, never the user code's traceback).
    """
    module_name, attr = parse_import_path(spec, what)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:     # what `python -m` puts first
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModelError(f"{what} {spec}: no module named {e.name!r} (searched the current directory "
                             "and sys.path)") from None
        raise ModelError(f"{what} {spec}: importing {module_name} failed ({one_line(e)})") from None
    except Exception as e:      # user code: any error while importing it
        raise ModelError(f"{what} {spec}: importing {module_name} failed ({one_line(e)})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelError(f"{what} {spec}: module {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"{what} {spec}: {attr} is a {type(target).__name__}, not a callable")
    return target


def accepted_keywords(fn: Callable[..., Any], names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` the callable ``fn`` takes as explicitly named keyword parameters.

    Args:
        fn: a function or class.
        names: candidate keyword names.

    Returns:
        The subset of ``names`` in its signature (empty when it has none that can be read).
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n in names if n in parameters and parameters[n].kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def one_line(error: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
