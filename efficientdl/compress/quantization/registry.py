"""The quantizers, one registry: name → a function that puts the quantizer's state on a model.

Each entry is ``apply(model, calibration=None, finetune=None, **options) -> dict`` and
declares its options (:class:`~efficientdl.core.options.Option`, with their ranges), so
that ``edl quantize --method NAME``, recipes and the Python API accept the same names
and values:

* ``kmeans`` — weight sharing by k-means with trained centroids (Han et al., ICLR'16);
  optionally Hessian-weighted (Choi, El-Khamy & Lee, ICLR'17) and with GPTQ-style error
  compensation (Frantar et al.), both from the calibration batches;
* ``fixed-point`` — dynamic fixed point (Qiu et al., FPGA'16), weights and activations;
* ``int8`` — affine integer quantization (Jacob et al., CVPR'18), per-channel weights;
* ``ttq``, ``twn``, ``binary`` — trained ternary (Zhu et al., ICLR'17), ternary weight
  networks (Li & Liu 2016) and binary weights ``α · sign(W)`` (Rastegari et al. 2016).

What each leaves on the model is a parametrization (:mod:`efficientdl.core.state`, and
:mod:`~efficientdl.compress.quantization.ternary` for the ternary scales), so
fine-tuning, the file and the runtime read it from there.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from ...core.options import Option, check_options
from ...core.registry import Registry
from ...errors import RecipeError
from ..calibration import collect_statistics, is_covered
from ..layers import check_spec_keys, compressible_tensors, tensor_setting
from .fixed_point import freeze, quantize_linear
from .share import INITS, WEIGHTINGS, share
from .ternary import ternarize

Quantizer = Callable[..., dict]
QUANTIZERS: Registry[Quantizer] = Registry("quantizer")

_BITS = Option("bits", int, None, 1, 16, per_layer=True, help="bits per weight (or per weight index)")
_INIT = Option("init", str, "linear", choices=INITS, help="k-means centroid start")
_WEIGHTING = Option("weighting", str, "none", choices=WEIGHTINGS,
                    help="k-means objective: none (plain) or hessian (weighted by ‖X_j‖², Choi et al., ICLR'17)")
_COMPENSATE = Option("compensate", bool, False,
                     help="round onto the codebook with GPTQ-style error compensation (needs calibration data)")
_ACTIVATION_BITS = Option("activation_bits", int, 8, 2, 16, per_layer=True, help="bits per input activation")
_THRESHOLD = Option("threshold", float, 0.05, 0, 1, high_open=True, help="TTQ threshold t: zero |w| < t · max|W|")


def _kmeans(model: nn.Module, calibration: Iterable | None = None, finetune: Callable | None = None,
            bits: Any = None, init: str = "linear", seed: int = 0, weighting: str = "none",
            compensate: bool = False, damp: float = 0.01, num_batches: int | None = 16) -> dict:
    bits = {"Conv2d": 8, "Linear": 5} if bits is None else bits
    statistics = None
    if weighting != "none" or compensate:
        if calibration is None:
            raise RecipeError(f"quantize kmeans: weighting={weighting!r}, compensate={compensate} "
                              "needs calibration data")
        check_spec_keys(bits, model, "bits")
        keys = [t.key for t in compressible_tensors(model)
                if is_covered(t, model) and tensor_setting(bits, t, "bits") is not None]
        statistics = collect_statistics(model, calibration, keys=keys, max_batches=num_batches) if keys else {}
    _, report = share(model, bits=bits, init=init, seed=seed, finetune=finetune, weighting=weighting,
                      statistics=statistics, compensate=compensate, damp=damp)
    return report.to_dict()


def _linear(scheme: str, default_bits: int) -> Quantizer:
    def apply(model: nn.Module, calibration: Iterable | None = None, finetune: Callable | None = None,
              bits: Any = None, activation_bits: Any = 8, per_channel: bool = True, num_batches: int = 16) -> dict:
        layers = quantize_linear(model, calibration, scheme=scheme, weight_bits=default_bits if bits is None else bits,
                                 activation_bits=activation_bits, per_channel=per_channel, num_batches=num_batches)
        if finetune is not None:
            finetune(model)
        freeze(model)
        return {"layers": layers}
    return apply


def _ternary(method: str) -> Quantizer:
    def apply(model: nn.Module, calibration: Iterable | None = None, finetune: Callable | None = None,
              threshold: float = 0.05, keep_first_last: bool = True) -> dict:
        layers = ternarize(model, method, threshold=threshold, keep_first_last=keep_first_last)
        if finetune is not None:
            finetune(model)
        return {"layers": layers}
    return apply


QUANTIZERS.register("kmeans", _kmeans, options={"bits": _BITS, "init": _INIT, "weighting": _WEIGHTING,
                                                "compensate": _COMPENSATE},
                    help="weight sharing: k-means clusters with trained centroids (Han et al., ICLR'16)")
QUANTIZERS.register("fixed-point", _linear("fixed", 8), options={"bits": _BITS, "activation_bits": _ACTIVATION_BITS},
                    help="dynamic fixed point, weights and activations (Qiu et al., FPGA'16)")
QUANTIZERS.register("int8", _linear("affine", 8), options={"bits": _BITS, "activation_bits": _ACTIVATION_BITS},
                    help="affine integer quantization, per-channel weights (Jacob et al., CVPR'18)")
QUANTIZERS.register("ttq", _ternary("ttq"), options={"threshold": _THRESHOLD},
                    help="trained ternary quantization: learned scales W_p, W_n (Zhu et al., ICLR'17)")
QUANTIZERS.register("twn", _ternary("twn"), options={},
                    help="ternary weight networks: a fixed scale (Li & Liu 2016)")
QUANTIZERS.register("binary", _ternary("binary"), options={},
                    help="binary weights α · sign(W) (Rastegari et al., ECCV'16)")


def quantize(model: nn.Module, method: str, calibration: Iterable | None = None,
             finetune: Callable[[nn.Module], Any] | None = None, **options: Any) -> dict:
    """Quantize ``model`` in place with a registered quantizer.

    Args:
        model: any ``nn.Module``.
        method: a name of :data:`QUANTIZERS`.
        calibration: batches for activation ranges (fixed point, int8) and for the input
            statistics of ``kmeans`` with ``weighting="hessian"`` or ``compensate=True``
            (the first ``num_batches``, default 16).
        finetune: called as ``finetune(model)`` with the quantizer in the loop (centroids,
            straight-through quantizers, ternary scales).
        **options: the method's declared options (``bits``, ``init``, ``weighting``,
            ``compensate``, ``activation_bits``, ``threshold``; ``seed``, ``damp``,
            ``per_channel``, ``num_batches``, ``keep_first_last`` where the method takes them).

    Returns:
        The method's report as a dict.

    Raises:
        RecipeError: an unknown method, or a declared option out of range.
    """
    entry = QUANTIZERS.entry(method, "quantize")
    declared = {k: v for k, v in options.items() if k in entry.options}
    check_options(entry.options, declared, f"quantize {method}")
    return entry.obj(model, calibration=calibration, finetune=finetune, **options)
