"""Compression recipes: the pipeline's calls written down in YAML, validated before any work.

A recipe is a mapping with these keys (all optional except ``model``)::

    model: lenet300              # registry name
    data: fashion-mnist          # dataset name
    seed: 0
    batch_size: 128
    fold_batchnorm: false        # fold BatchNorm into the layer before it, after dense training
    dense:    {epochs, lr, momentum, weight_decay, schedule, warmup_epochs, clip_grad_norm}
    prune:    {sparsity | quality, steps, sparsity_schedule, epochs, lr, momentum, weight_decay,
               schedule, warmup_epochs, clip_grad_norm, distill}
    quantize: {bits, init, epochs, lr, momentum, weight_decay, schedule, warmup_epochs,
               clip_grad_norm, distill}

``schedule`` is always the learning-rate schedule of the stage's (re)training
(cosine, step, constant), ``warmup_epochs`` its linear warmup and ``clip_grad_norm``
its gradient-norm clipping (see :class:`efficientdl.train.Trainer`);
``sparsity_schedule`` is how the pruning target grows over the ``steps`` (gradual:
cubic, Zhu & Gupta; linear).
    encode:   {index_bits, coding}

``sparsity``, ``quality``, ``bits`` and ``index_bits`` take one number or a mapping
by layer name / module type / ``default``.  Every problem is reported as
``FILE:LINE: key: message`` and nothing runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..core.options import Option
from ..errors import RecipeError
from ..format.streams import CODINGS
from ..train.options import TRAIN_OPTIONS
from .pruning.prune import SPARSITY_SCHEDULES, check_targets
from .quantization.registry import QUANTIZERS


def _number(lo: float | None = None, hi: float | None = None, integer: bool = False,
            lo_open: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return f"expected {'an integer' if integer else 'a number'}, got {v!r}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '≥'} {lo}, got {v!r}"
        if hi is not None and v > hi:
            return f"must be ≤ {hi}, got {v!r}"
        return None
    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"expected one of {', '.join(options)}, got {v!r}"


def _per_layer(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def per_layer(v: Any) -> str | None:
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"layer key {k!r} must be a name"
                msg = check(x)
                if msg:
                    return f"'{k}': {msg}"
            return None if v else "empty mapping"
        return check(v)
    return per_layer


def _is(kind: type, name: str) -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, kind) else f"expected {name}, got {v!r}"


def _option(option: Option) -> Callable[[Any], str | None]:
    return option.problem


#: every stage's (re)training keys, as the Trainer and the command line declare them
_TRAIN = {name: _option(option) for name, option in TRAIN_OPTIONS.items()}
SCHEMA: dict[str, Any] = {
    "model": _is(str, "a model name"),
    "data": _is(str, "a dataset name"),
    "seed": _number(0, 2**31 - 1, integer=True),
    "batch_size": _number(1, 1 << 16, integer=True),
    "fold_batchnorm": _is(bool, "true or false"),
    "dense": _TRAIN,
    "prune": {**_TRAIN, "sparsity": _per_layer(_number(0, 1)), "quality": _per_layer(_number(0, 100)),
              "steps": _number(1, 1000, integer=True), "sparsity_schedule": _choice(*SPARSITY_SCHEDULES),
              "distill": _is(bool, "true or false")},
    "quantize": {**_TRAIN, **{name: _option(o) for name, o in QUANTIZERS.entry("kmeans").options.items()},
                 "distill": _is(bool, "true or false")},
    "encode": {"index_bits": _per_layer(_number(1, 8, integer=True)), "coding": _choice(*CODINGS)},
}


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        data: the recipe mapping.
        path: the file it came from (``None`` for a dict).
        lines: 1-based line of each key path (``("prune", "sparsity")``) in the file.
    """

    data: dict[str, Any]
    path: str | None = None
    lines: dict[tuple, int] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any] | None:
        """The mapping of one stage, or ``None`` when the recipe skips that stage."""
        return self.data.get(name)

    def where(self, *keys: str) -> str:
        """``FILE:LINE`` of a key path, for error messages."""
        line = self.lines.get(tuple(keys))
        if self.path is None:
            return "recipe"
        return f"{self.path}:{line}" if line else str(self.path)


def _line_map(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = prefix + (k.value,)
            lines[key] = k.start_mark.line + 1
            lines.update(_line_map(v, key))
    return lines


def validate(data: Any, path: str | None = None, lines: dict[tuple, int] | None = None) -> Recipe:
    """Check a recipe mapping against the schema.

    Args:
        data: the parsed recipe.
        path: file name for messages.
        lines: line of each key path.

    Returns:
        A :class:`Recipe`.

    Raises:
        RecipeError: ``FILE:LINE: key: message`` for the first problem found.
    """
    recipe = Recipe(data if isinstance(data, dict) else {}, path, lines or {})
    if not isinstance(data, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping of stages, got {type(data).__name__}")

    def walk(mapping: dict, schema: dict, keys: tuple) -> None:
        for key, value in mapping.items():
            kp = keys + (key,)
            dotted = ".".join(map(str, kp))
            if key not in schema:
                known = ", ".join(schema)
                raise RecipeError(f"{recipe.where(*kp)}: unknown key '{dotted}' (known: {known})")
            rule = schema[key]
            if isinstance(rule, dict):
                if value is None:
                    value = mapping[key] = {}
                if not isinstance(value, dict):
                    raise RecipeError(f"{recipe.where(*kp)}: '{dotted}' must be a mapping")
                walk(value, rule, kp)
            else:
                msg = rule(value)
                if msg:
                    raise RecipeError(f"{recipe.where(*kp)}: {dotted}: {msg}")

    walk(data, SCHEMA, ())
    if "model" not in data:
        raise RecipeError(f"{recipe.where()}: the recipe must name a 'model'")
    if data.get("prune") is not None:
        prune = data["prune"]
        check_targets(prune.get("sparsity"), prune.get("quality"), where=recipe.where("prune"))
    if data.get("quantize") is not None and "bits" not in data["quantize"]:
        raise RecipeError(f"{recipe.where('quantize')}: quantize needs 'bits'")
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe file.

    Raises:
        RecipeError: missing/unreadable file, YAML syntax error or schema violation,
            with file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: no such recipe file" if not p.exists() else f"{p}: is not a file")
    try:
        text = p.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{p}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return validate(data, str(p), _line_map(node) if node is not None else {})
