"""Describe a torch model for the training-step model (:mod:`efficientdl.hardware.training`).

One forward pass of a single sample with hooks on every leaf module (and a
``TorchFunctionMode`` catching the functional operations outside modules: residual
additions, ``torch.relu``, ``F.max_pool2d``) records, per layer, the forward MACs, the
trainable parameters, the activations read and written, and the activations saved for
the backward pass.  The result is a neutral
:class:`~efficientdl.hardware.workload.TrainingWorkload`: ``hardware/`` reads it and
never sees torch.

MACs per sample (forward), the usual hand counts:

* ``ConvNd``: ``C_out · C_in/groups · prod(kernel) · prod(output spatial)``;
* ``Linear``: ``in · out`` per output row (times the sequence length for 3-d inputs);
* ``LSTM`` / ``GRU`` / ``RNN``: ``T · g·H·(I_l + H)`` per layer and direction, with
  ``g`` = 4, 3, 1 gates and ``I_l`` the layer's input width;
* ``MultiheadAttention`` (query length ``L``, key length ``S``, width ``E``):
  ``L·E² + 2·S·E² + L·E²`` (q, k, v, output projections) ``+ 2·L·S·E`` (scores and
  weighted values).

Saved activations follow what autograd keeps: a convolution, linear, norm or attention
layer keeps its input, ReLU its output, max-pooling its input and indices, LSTM its
input and per step its gates and cell (``5H``); a tensor saved by two layers (the
output of an in-place ReLU that the next convolution reads) is counted once.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ModelError
from ..hardware.workload import TrainingLayer, TrainingWorkload

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)
_ACT_SAVES_OUTPUT = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh)
_ACT_SAVES_INPUT = (nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Softmax)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}

_F = nn.functional
_FUNCTIONAL = {
    torch.add: "add", torch.Tensor.add: "add", torch.Tensor.add_: "add", torch.Tensor.__add__: "add",
    torch.Tensor.__iadd__: "add", torch.Tensor.__radd__: "add",
    torch.relu: "act", torch.Tensor.relu: "act", _F.relu: "act", torch.relu_: "act", torch.Tensor.relu_: "act",
    torch.tanh: "act", torch.sigmoid: "act", _F.gelu: "act",
    _F.max_pool2d: "pool", _F.avg_pool2d: "pool", _F.adaptive_avg_pool2d: "pool",
}


def _elements(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_elements(v) for v in value)
    return 0


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _rnn_macs(module: nn.RNNBase, steps: int) -> int:
    gates = next(g for cls, g in _RNN_GATES.items() if isinstance(module, cls))
    h, dirs = module.hidden_size, 2 if module.bidirectional else 1
    macs = 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else h * dirs
        macs += dirs * steps * gates * h * (width + h)
    return macs


def _describe(module: nn.Module, inputs: tuple, output) -> tuple[str, int, int]:
    """``(kind, forward MACs, extra saved elements)`` of a leaf module on one sample."""
    x = _first_tensor(inputs)
    if isinstance(module, _CONV):
        spatial = math.prod(_first_tensor(output).shape[2:])
        return "conv", module.weight.numel() * spatial, 0
    if isinstance(module, nn.Linear):
        rows = _first_tensor(output).numel() // module.out_features
        return "fc", module.weight.numel() * rows, 0
    if isinstance(module, nn.RNNBase):
        steps = x.shape[1] if module.batch_first else x.shape[0]
        extra = steps * module.num_layers * (2 if module.bidirectional else 1) * 5 * module.hidden_size
        return "lstm", _rnn_macs(module, steps), extra
    if isinstance(module, nn.MultiheadAttention):
        q, k = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
        ax = 1 if module.batch_first else 0
        length, source, width = q.shape[ax], k.shape[ax], module.embed_dim
        macs = 2 * length * width * width + 2 * source * width * width + 2 * length * source * width
        return "attention", macs, 4 * length * width + module.num_heads * length * source
    if isinstance(module, _NORM):
        return "norm", 0, 0
    if isinstance(module, _ACT_SAVES_OUTPUT + _ACT_SAVES_INPUT):
        return "act", 0, 0
    if isinstance(module, _MAXPOOL):
        return "pool", 0, _elements(output)              # the argmax indices
    if isinstance(module, _AVGPOOL):
        return "pool", 0, 0
    return "other", 0, 0


def _groups(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Layer name → a coarse group: the top-level container (``layer1``), ``stem`` for
    leaves before the first container, ``head`` after the last; a container holding most
    of the layers is split one level further (``layers.3``)."""
    top = dict(model.named_children())
    containers = [n for n, m in top.items() if any(True for _ in m.children())]
    order = list(top)
    first = order.index(containers[0]) if containers else len(order)
    last = order.index(containers[-1]) if containers else -1
    out: dict[str, str] = {}
    previous = "stem"
    for name in names:
        head = name.split(".")[0]
        if head in containers:
            out[name] = head
        elif head in top and not containers:
            out[name] = head if any(True for _ in top[head].parameters()) else previous
        elif head in top:
            out[name] = "stem" if order.index(head) < first else "head" if order.index(head) > last else head
        else:
            out[name] = previous                         # a functional op of the root: its neighbour's group
        previous = out[name]
    counts: dict[str, int] = {}
    for g in out.values():
        counts[g] = counts.get(g, 0) + 1
    for g, c in counts.items():
        if g in containers and c > 0.5 * len(names) and len(list(top[g].children())) > 1:
            for name in names:
                if out[name] == g and len(name.split(".")) > 2:
                    out[name] = ".".join(name.split(".")[:2])
    return out


def training_workload(model: nn.Module, input_shape: tuple[int, ...], name: str | None = None,
                      example_input: torch.Tensor | None = None) -> TrainingWorkload:
    """The per-layer training workload of ``model`` for one sample of ``input_shape``.

    Args:
        model: any ``nn.Module`` (its ``Conv``, ``Linear``, ``LSTM``/``GRU``/``RNN``,
            ``MultiheadAttention``, norm, activation and pooling leaves are described; other
            leaves as ``"other"``; parameters outside any leaf as one ``"other"`` layer).
        input_shape: one sample's shape, e.g. ``(3, 224, 224)``.
        name: the workload's name (default: the model's class name).
        example_input: a batch of one sample to use instead of zeros (e.g. token ids).

    Returns:
        A :class:`~efficientdl.hardware.workload.TrainingWorkload`, layers in execution order.

    Raises:
        ModelError: the model does not accept the input.
    """
    x = example_input if example_input is not None else torch.zeros(1, *input_shape)
    whole = (nn.MultiheadAttention, nn.RNNBase)         # described as one layer, children included
    inside = {id(c) for m in model.modules() if isinstance(m, whole) for c in m.modules() if c is not m}
    leaves = {m: n for n, m in model.named_modules()
              if id(m) not in inside and (isinstance(m, whole) or not any(True for _ in m.children()))}
    raw: list[dict] = []
    saved_ptrs: set[int] = set()
    keep: list[torch.Tensor] = []              # hold tensors so their storage is not reused
    depth = [0]
    stack: list[str] = []
    input_ptr = x.data_ptr()
    calls: dict[str, int] = {}

    def save(t, count: list[int]) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            keep.append(t)
            ptr = t.untyped_storage().data_ptr()
            if ptr not in saved_ptrs:
                saved_ptrs.add(ptr)
                count[0] += t.numel()

    def record(lname: str, kind: str, macs: int, params: int, inputs, output, saves: str, extra: int) -> None:
        count = [0]
        if saves == "input":
            save(_first_tensor(inputs), count)
        elif saves == "output":
            save(_first_tensor(output), count)
        t = _first_tensor(inputs)
        calls[lname] = calls.get(lname, 0) + 1
        if calls[lname] > 1:                             # a module called again (a shared ReLU)
            lname = f"{lname}#{calls[lname]}"
        raw.append({"name": lname, "kind": kind, "macs": int(macs), "params": int(params),
                    "input_elements": _elements(inputs), "output_elements": _elements(output),
                    "saved_elements": count[0] + int(extra),
                    "needs_input_grad": not (isinstance(t, torch.Tensor) and t.data_ptr() == input_ptr)})

    def post(module, inputs, output):
        stack.pop()
        if module not in leaves:
            return
        depth[0] -= 1
        if isinstance(module, (nn.Identity, nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return                                       # an empty container: no work
        kind, macs, extra = _describe(module, inputs, output)
        params = sum(p.numel() for p in module.parameters(recurse=isinstance(module, whole)) if p.requires_grad)
        saves = "output" if isinstance(module, _ACT_SAVES_OUTPUT) else \
            "none" if isinstance(module, _AVGPOOL) or kind == "other" and not params else "input"
        record(leaves[module], kind, macs, params, inputs, output, saves, extra)

    class Functional(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            kind = _FUNCTIONAL.get(func)
            if kind and depth[0] == 0 and isinstance(out, torch.Tensor):
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                if kind != "add" or len(tensors) == 2:
                    owner = next((s for s in reversed(stack) if s), "")
                    idx = sum(1 for r in raw if r["name"].startswith(f"{owner}.{kind}" if owner else kind))
                    lname = f"{owner}.{kind}{idx}" if owner else f"{kind}{idx}"
                    record(lname, kind, 0, 0, tuple(tensors[:2] if kind == "add" else tensors[:1]), out,
                           "output" if kind == "act" else "input" if kind == "pool" else "none",
                           out.numel() if kind == "pool" and "max" in getattr(func, "__name__", "") else 0)
            return out

    # container names for functional ops: every module pushes its name
    names = {m: n for n, m in model.named_modules()}

    def pre(module, inputs):
        stack.append(names.get(module, ""))
        depth[0] += module in leaves

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    was_training = model.training
    try:
        model.eval()                                     # shapes only; leave running statistics alone
        with torch.no_grad(), Functional():
            model(x)
    except ModelError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise ModelError(f"model does not accept an input of shape {tuple(x.shape)}: "
                         f"{str(error).splitlines()[0]}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    covered = {id(p) for m in leaves for p in m.parameters(recurse=isinstance(m, whole))}
    loose = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in covered)
    if loose:
        raw.append({"name": "(parameters outside leaf modules)", "kind": "other", "macs": 0, "params": loose,
                    "input_elements": 0, "output_elements": 0, "saved_elements": 0, "needs_input_grad": True})
    groups = _groups(model, [r["name"] for r in raw])
    layers = tuple(TrainingLayer(group=groups[r["name"]], **r) for r in raw)
    return TrainingWorkload(name or type(model).__name__, layers, tuple(int(s) for s in x.shape[1:]))
