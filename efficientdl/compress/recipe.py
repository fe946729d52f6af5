"""Compression recipes: the pipeline's calls written down in YAML, validated before any work.

A recipe is a mapping with these keys (all optional except ``model``)::

    model: lenet300              # registry name, or your own nn.Module: MODULE:CALLABLE
    model_kwargs: {width: 16}    # keyword arguments of the model's constructor (optional)
    data: fashion-mnist          # dataset name
    seed: 0
    batch_size: 128
    bn: fold                     # fold: BatchNorm into the layer before it, after dense training;
                                 # reestimate: its running statistics on the calibration samples
                                 # after each compression stage; keep (default)
    fold_batchnorm: false        # the older spelling of bn: fold
    dense:    {epochs, lr, momentum, weight_decay, schedule, warmup_epochs, clip_grad_norm}
    prune:    {sparsity | quality | pattern, method, calibration, sequential, allocation, bias_correction,
               steps, sparsity_schedule, epochs, lr, momentum, weight_decay,
               schedule, warmup_epochs, clip_grad_norm, distill}
    quantize: {bits, init, weighting, compensate, calibration, bias_correction, epochs, lr,
               momentum, weight_decay, schedule, warmup_epochs, clip_grad_norm, distill}

Post-training compression (a trained network, unlabeled samples, no retraining):
``prune.method`` is ``magnitude`` (the default: iterative pruning with retraining as in
Deep Compression), ``obs`` (SparseGPT-style reconstruction) or ``wanda``; ``pattern``
(``"2:4"``, per layer) asks for N:M sparsity; ``calibration`` is the number of training
samples whose inputs (labels ignored) calibrate the layers (default 512 where a method
needs them); ``sequential`` calibrates each layer on the already-pruned earlier ones; ``allocation: error``
spreads one network-wide ``sparsity`` over the layers by their measured error curves
(``uniform``, the default, prunes every layer alike).
A post-training prune stage does not retrain unless ``epochs`` asks for it.
``quantize.weighting: hessian`` weights the k-means by the calibration inputs' ``diag H``
and ``compensate`` adds GPTQ-style error compensation.  ``bias_correction`` shifts each
compressed layer's bias by its mean output error on the calibration samples.

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
from .pruning.criteria import parse_pattern
from .pruning.post_training import ALLOCATIONS, METHODS
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


def _pattern(v: Any) -> str | None:
    try:
        parse_pattern(v if isinstance(v, str) else None)
    except ValueError as error:
        return str(error)
    return None


def _is(kind: type, name: str) -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, kind) else f"expected {name}, got {v!r}"


def _option(option: Option) -> Callable[[Any], str | None]:
    return option.problem


def _model(v: Any) -> str | None:
    """A registry name (checked when the model is built) or a well-formed import path MODULE:CALLABLE."""
    from ..errors import ModelError
    from ..models.user import is_import_path, parse_import_path

    if not isinstance(v, str) or not v.strip():
        return f"expected a model name or MODULE:CALLABLE, got {v!r}"
    if is_import_path(v):
        try:
            parse_import_path(v)
        except ModelError as e:
            return str(e)
    return None


def _kwargs(v: Any) -> str | None:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        return f"expected a mapping of keyword arguments, got {v!r}"
    return None


#: what ``bn:`` does with BatchNorm layers
BN_MODES = ("keep", "fold", "reestimate")
#: calibration samples of a stage that needs them and does not say how many
DEFAULT_CALIBRATION = 512

#: every stage's (re)training keys, as the Trainer and the command line declare them
_TRAIN = {name: _option(option) for name, option in TRAIN_OPTIONS.items()}
SCHEMA: dict[str, Any] = {
    "model": _model,
    "model_kwargs": _kwargs,
    "data": _is(str, "a dataset name"),
    "seed": _number(0, 2**31 - 1, integer=True),
    "batch_size": _number(1, 1 << 16, integer=True),
    "fold_batchnorm": _is(bool, "true or false"),
    "bn": _choice(*BN_MODES),
    "dense": _TRAIN,
    "prune": {**_TRAIN, "sparsity": _per_layer(_number(0, 1)), "quality": _per_layer(_number(0, 100)),
              "pattern": _per_layer(_pattern), "method": _choice(*METHODS),
              "calibration": _number(1, 1 << 20, integer=True), "sequential": _is(bool, "true or false"),
              "allocation": _choice(*ALLOCATIONS), "bias_correction": _is(bool, "true or false"),
              "steps": _number(1, 1000, integer=True), "sparsity_schedule": _choice(*SPARSITY_SCHEDULES),
              "distill": _is(bool, "true or false")},
    "quantize": {**_TRAIN, **{name: _option(o) for name, o in QUANTIZERS.entry("kmeans").options.items()},
                 "calibration": _number(1, 1 << 20, integer=True), "bias_correction": _is(bool, "true or false"),
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
    if "fold_batchnorm" in data and "bn" in data:
        raise RecipeError(f"{recipe.where('fold_batchnorm')}: give 'bn' or its older spelling 'fold_batchnorm', "
                          "not both")
    if data.get("prune") is not None:
        prune = data["prune"]
        check_targets(prune.get("sparsity"), prune.get("quality"), prune.get("pattern"), where=recipe.where("prune"),
                      names=("'sparsity'", "'quality' or 'pattern'"))
        if post_training_prune(prune) and prune.get("quality") is not None:
            raise RecipeError(f"{recipe.where('prune', 'quality')}: post-training pruning (method, pattern, "
                              "calibration) takes 'sparsity' or 'pattern', not 'quality'")
        if prune.get("sequential") and not post_training_prune(prune):
            raise RecipeError(f"{recipe.where('prune', 'sequential')}: 'sequential' is a post-training setting: "
                              "give a 'method' (obs, wanda) or 'calibration' too")
        if prune.get("allocation", "uniform") != "uniform":
            if not post_training_prune(prune):
                raise RecipeError(f"{recipe.where('prune', 'allocation')}: 'allocation' is a post-training setting: "
                                  "give a 'method' (obs, wanda) or 'calibration' too")
            if prune.get("pattern") is not None or prune.get("sequential"):
                raise RecipeError(f"{recipe.where('prune', 'allocation')}: allocation 'error' spreads one sparsity "
                                  "over the layers: not with 'pattern' or 'sequential'")
            if isinstance(prune.get("sparsity"), dict):
                raise RecipeError(f"{recipe.where('prune', 'allocation')}: allocation 'error' needs one "
                                  "network-wide 'sparsity' (a number), not one per layer")
    if data.get("quantize") is not None and "bits" not in data["quantize"]:
        raise RecipeError(f"{recipe.where('quantize')}: quantize needs 'bits'")
    return recipe


def post_training_prune(section: dict[str, Any]) -> bool:
    """Whether a ``prune:`` section asks for post-training pruning (a calibrated method,
    a pattern or calibration samples) rather than iterative magnitude pruning."""
    return (section.get("method", "magnitude") != "magnitude" or section.get("pattern") is not None
            or section.get("calibration") is not None)


def calibration_samples(recipe: Recipe) -> int | None:
    """How many calibration samples the recipe's stages need (``None``: none).

    The largest ``calibration`` any stage gives, else :data:`DEFAULT_CALIBRATION` when a
    stage needs samples (post-training pruning, Hessian weighting or compensation, bias
    correction, BatchNorm re-estimation).
    """
    r = recipe.data
    prune, quantize = r.get("prune") or {}, r.get("quantize") or {}
    given = [s["calibration"] for s in (prune, quantize) if s.get("calibration") is not None]
    if given:
        return max(given)
    needs = ((r.get("prune") is not None and post_training_prune(prune))
             or quantize.get("weighting", "none") != "none" or quantize.get("compensate")
             or prune.get("bias_correction") or quantize.get("bias_correction") or r.get("bn") == "reestimate")
    return DEFAULT_CALIBRATION if needs else None


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
