"""Chains of compressed linear layers run as one compiled call at batch 1.

At batch 1 a small network spends most of its time outside the products: on
LeNet-300-100 at 90% sparsity, each ``nn.Linear`` call goes through the module call,
``F.linear``, the compressed weight's ``__torch_function__``, the prepared kernel's
Python wrapper and the kernel's entry into compiled code, and those steps together cost
several times the sparse product they serve.  Dense inference engines remove the same
overhead by compiling the graph (ONNX Runtime's fused sessions, TorchScript); here the
runtime does it for the compressed layers it serves:

1. the model's ``forward`` is traced with ``torch.fx`` (a model that cannot be traced
   keeps its per-layer path, and the report says why);
2. every maximal run ``linear → [activation] → linear → …`` of at least two linear
   layers whose weights are held compressed (an ``nn.Linear`` called as a module, or
   ``F.linear`` on a compressed parameter), where each intermediate value has no other
   user, becomes one :class:`LinearChain` node; activations are ReLU, ReLU6, tanh,
   sigmoid, identity and dropout (identity in evaluation mode), as functions, methods
   or modules;
3. the chain runs :func:`efficientdl.kernels.cpu.chain_function`: all its products,
   biases and activations in one compiled call, each product by the batch-1 kernel
   choice (the column kernel skipping zero activations, or the row kernel);
4. any call the fused path does not cover — more than one sample, float64, a gradient,
   a weight :func:`~efficientdl.nn.weights.settle` or the user made dense again, a kernel
   forced on one of the weights, a hook on one of the layers, dropout in training mode —
   runs the chain's original steps,
   module by module, exactly as the traced model would;
5. with the chains (traced or not), every ``nn.BatchNorm2d`` module is computed as its
   precomputed per-channel affine ``x · s + t`` in evaluation mode
   (:mod:`efficientdl.nn.batchnorm`): one ``torch.addcmul`` instead of the module's path.

The traced module replaces only the model's ``forward`` (an instance attribute): the
modules, parameters and state dict stay the user's.  :func:`uninstall` restores the
class's own ``forward``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..kernels import cpu
from . import batchnorm as _batchnorm
from .weights import CompressedWeight

#: activation functions (called as ``f(x)``, optionally ``inplace=…``) → chain activation
_FUNCTIONS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
                              torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
#: tensor methods → chain activation
_METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
#: module classes (exactly these) → chain activation; dropout is the identity in evaluation mode
_MODULES: dict[type, str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                             nn.Identity: "identity", nn.Dropout: "identity"}


@dataclass
class _Layer:
    """One linear layer of a chain: where its weight and bias live, and how to run it unfused."""

    owner: nn.Module            # the module holding the parameters
    weight_attr: str
    bias_attr: str | None
    weight: nn.Parameter        # the compressed parameter the chain was compiled for
    bias: nn.Parameter | None
    module: nn.Module | None    # an nn.Linear called as a module (its hooks are checked), else None
    name: str                   # the weight's tensor name

    def unfused(self, x: torch.Tensor) -> torch.Tensor:
        if self.module is not None:
            return self.module(x)
        bias = None if self.bias_attr is None else getattr(self.owner, self.bias_attr)
        return F.linear(x, getattr(self.owner, self.weight_attr), bias)


@dataclass
class _Activation:
    kind: str                   # a key of cpu.CHAIN_ACTIVATIONS
    run: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module | None = None


class LinearChain(nn.Module):
    """Linear layers and activations computed in one compiled call for one sample.

    ``forward(x)`` equals the traced steps ``f_L(W_L … f_1(W_1 x + b_1) … + b_L)``; for a
    float32 CPU input holding a single sample (shape ``(C,)`` or ``(1, …, C)``), without
    gradient, while every layer still holds the compressed weight it was compiled for, it
    is one call of :func:`efficientdl.kernels.cpu.chain_function`; otherwise the steps run
    one by one (see the module docstring).

    Attributes:
        layers: the tensor names of the chain's weights, in order.
        activations: the activation after each layer (``identity`` where none).
        fused_calls / unfused_calls: how many calls took each path.
    """

    def __init__(self, layers: list[_Layer], activations: list[list[_Activation]]) -> None:
        super().__init__()
        self._layers = layers
        self._activations = activations
        kinds = [_combined([a.kind for a in acts]) for acts in activations]
        self.layers = [layer.name for layer in layers]
        self.activations = kinds
        parts = []
        for layer, kind in zip(layers, kinds):
            w = layer.weight
            bias = None if layer.bias is None else layer.bias.detach()
            parts.append((w.matrix, w.twin, None if bias is None else bias.numpy(), kind))
        self._in_features = layers[0].weight.shape[1]
        self._out_features = layers[-1].weight.shape[0]
        self._out_shape = (self._out_features,)
        self._kernel = cpu.chain_function(parts)
        self._checks = tuple((layer.owner._parameters, layer.weight_attr, layer.weight._payload,
                              layer.bias_attr, layer.bias) for layer in layers)
        self._hooked = tuple(m for m in [layer.module for layer in layers] +
                             [a.module for acts in activations for a in acts] if m is not None)
        self._dropouts = tuple(m for m in self._hooked if isinstance(m, nn.Dropout))
        self._calls = [0, 0]                     # fused, unfused (a list: nn.Module.__setattr__ costs µs)

    @property
    def fused_calls(self) -> int:
        return self._calls[0]

    @property
    def unfused_calls(self) -> int:
        return self._calls[1]

    def __deepcopy__(self, memo):
        # a copy computes from the copied model's parameters (the compiled kernel holds views of them)
        new = LinearChain(copy.deepcopy(self._layers, memo), copy.deepcopy(self._activations, memo))
        memo[id(self)] = new
        return new

    def _fusable(self, x: Any) -> bool:
        # the cheapest tests first: this runs on every call, and at batch 1 its microseconds count
        if type(x) is not torch.Tensor or x.dtype != torch.float32 or not x.is_cpu:
            return False
        if x.numel() != self._in_features or x.shape[-1] != self._in_features or not x.is_contiguous():
            return False
        if x.requires_grad and torch.is_grad_enabled():
            return False
        for parameters, weight_attr, payload, bias_attr, bias in self._checks:
            # the same compressed weight (settle and RuntimeReport.hold re-wrap it in a new Parameter),
            # with no kernel forced on it since (a forced kernel is honoured, layer by layer)
            if getattr(parameters.get(weight_attr), "_payload", None) is not payload or payload.forced_kernel:
                return False
            if bias_attr is not None and parameters.get(bias_attr) is not bias:
                return False
        for m in self._hooked:
            if m._forward_hooks or m._forward_pre_hooks:
                return False
        for m in self._dropouts:
            if m.training:
                return False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):
            self._calls[0] += 1
            y = self._kernel((x.detach() if x.requires_grad else x).numpy().reshape(-1))
            # one sample: the output's shape is the input's with the last size changed
            return torch.from_numpy(y.reshape(x.shape[:-1] + self._out_shape))
        self._calls[1] += 1
        for layer, acts in zip(self._layers, self._activations):
            x = layer.unfused(x)
            for a in acts:
                x = a.run(x)
        return x


def _combined(kinds: list[str]) -> str:
    """One activation equal to applying ``kinds`` in order (identities dropped), or ValueError."""
    real = [k for k in kinds if k != "identity"]
    if not real:
        return "identity"
    if len(set(real)) == 1 and real[0] in ("relu", "relu6"):     # idempotent
        return real[0]
    if set(real) == {"relu", "relu6"}:                          # either order: clamp to [0, 6]
        return "relu6"
    if len(real) == 1:
        return real[0]
    raise ValueError(f"activations {real} do not fold into one")


@dataclass
class ChainReport:
    """What :func:`install` did: the chains it compiled (or why it compiled none) and the
    BatchNorm modules it computes as affines."""

    chains: list[LinearChain] = field(default_factory=list)
    reason: str = ""
    batchnorms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"chains": [{"layers": c.layers, "activations": c.activations} for c in self.chains],
                "reason": self.reason, "batchnorm_affine": list(self.batchnorms)}


def _tensor_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}


def _keeps_own_kernel(w: CompressedWeight) -> bool:
    """``w`` stays out of chains: the dispatcher chose an int8 kernel for it (``precision="int8"``;
    a chain's products are exact), or a kernel is forced on it (the chain would not run that one)."""
    return w.forced_kernel is not None or any(r.approximate for r in w.chosen.values())


def _linear_of(node: fx.Node, modules: dict[str, nn.Module], gm_root: nn.Module, names: dict[int, str]):
    """The :class:`_Layer` of a node that is a linear product with a compressed weight, else ``None``."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is not nn.Linear or len(node.args) != 1 or node.kwargs:
            return None
        w = m._parameters.get("weight")
        if not isinstance(w, CompressedWeight) or _keeps_own_kernel(w):
            return None
        b = m._parameters.get("bias")
        return _Layer(m, "weight", None if b is None else "bias", w, b, m, names.get(id(w), node.target + ".weight"))
    if node.op == "call_function" and node.target is F.linear and not node.kwargs and len(node.args) in (2, 3):
        w_node = node.args[1]
        b_node = node.args[2] if len(node.args) == 3 else None
        if not isinstance(w_node, fx.Node) or w_node.op != "get_attr" or len(w_node.users) != 1:
            return None
        if b_node is not None and (not isinstance(b_node, fx.Node) or b_node.op != "get_attr" or len(b_node.users) != 1):
            return None
        owner_name, _, attr = w_node.target.rpartition(".")
        owner = gm_root.get_submodule(owner_name)
        w = owner._parameters.get(attr)
        if not isinstance(w, CompressedWeight) or _keeps_own_kernel(w):
            return None
        bias_owner, bias_attr, b = None, None, None
        if b_node is not None:
            bias_owner_name, _, bias_attr = b_node.target.rpartition(".")
            bias_owner = gm_root.get_submodule(bias_owner_name)
            b = bias_owner._parameters.get(bias_attr)
            if bias_owner is not owner or b is None:
                return None
        return _Layer(owner, attr, bias_attr, w, b, None, names.get(id(w), w_node.target))
    return None


def _activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> _Activation | None:
    """The :class:`_Activation` of a node that is an element-wise activation of its one input, else ``None``."""
    if len(node.args) != 1:
        return None
    if node.op == "call_function" and node.target in _FUNCTIONS and set(node.kwargs) <= {"inplace"}:
        fn, kwargs = node.target, dict(node.kwargs)
        return _Activation(_FUNCTIONS[fn], lambda x: fn(x, **kwargs))
    if node.op == "call_method" and node.target in _METHODS and not node.kwargs:
        method = node.target
        return _Activation(_METHODS[method], lambda x: getattr(x, method)())
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) in _MODULES:
            return _Activation(_MODULES[type(m)], m, m)
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def install(model: nn.Module) -> ChainReport:
    """Compile the chains of compressed linear layers of ``model`` and replace its evaluation-mode
    BatchNorm calls by their affines (see the module docstring).

    Args:
        model: a model from :func:`~efficientdl.nn.weights.to_runtime`, in evaluation mode.

    Returns:
        A :class:`ChainReport`; with chains or affines, ``model.forward`` is now the traced module.
    """
    uninstall(model)
    batchnorms = _batchnorm.install(model)       # (no tracing needed: works on any model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:                   # control flow on values, unsupported Python: stay per layer
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return ChainReport(reason=f"the model's forward cannot be traced by torch.fx ({text[:160]})",
                           batchnorms=batchnorms)
    modules = dict(gm.named_modules())
    names = _tensor_names(model)
    chains: list[tuple[list[fx.Node], list[_Layer], list[list[_Activation]]]] = []
    taken: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node in taken:
            continue
        first = _linear_of(node, modules, gm, names)
        if first is None:
            continue
        nodes, layers, acts = [node], [first], [[]]
        current = node
        while True:                              # extend: activations, then the next linear
            user = _only_user(current)
            if user is None:
                break
            act = _activation_of(user, modules)
            if act is not None:
                try:
                    _combined([a.kind for a in acts[-1]] + [act.kind])
                except ValueError:
                    break
                acts[-1].append(act)
                nodes.append(user)
                current = user
                continue
            nxt = _linear_of(user, modules, gm, names)
            if nxt is None or nxt.weight.shape[1] != layers[-1].weight.shape[0]:
                break
            nodes.append(user)
            layers.append(nxt)
            acts.append([])
            current = user
        if len(layers) >= 2:
            chains.append((nodes, layers, acts))
            taken.update(nodes)
    report = ChainReport(reason="" if chains else "no run of two or more compressed linear layers")
    for i, (nodes, layers, acts) in enumerate(chains):
        try:
            chain = LinearChain(layers, acts)
        except ValueError as error:              # a layer the chain kernel cannot hold: per layer
            report.reason = f"{' → '.join(layer.name for layer in layers)} left per layer: {error}"
            continue
        name = f"edl_chain_{i}"
        gm.add_submodule(name, chain)
        with gm.graph.inserting_after(nodes[-1]):
            # the chain's forward called as a method: a module call's machinery (hook lookups)
            # would cost microseconds per sample on an internal module that holds no hooks
            held = gm.graph.get_attr(name)
        with gm.graph.inserting_after(held):
            new = gm.graph.call_method("forward", (held, nodes[0].args[0]))
        nodes[-1].replace_all_uses_with(new)
        for n in reversed(nodes):
            gm.graph.erase_node(n)
        report.chains.append(chain)
    report.batchnorms = batchnorms
    if not report.chains:
        return report
    gm.graph.eliminate_dead_code()
    gm.recompile()
    model.forward = _TracedForward(model, gm)
    model.__dict__["_edl_chains"] = report
    return report


class _TracedForward:
    """The traced module as ``model.forward`` while the model is in evaluation mode (as traced:
    a branch on ``self.training`` is fixed in the trace); in training mode the class's own."""

    def __init__(self, model: nn.Module, traced: fx.GraphModule) -> None:
        self.model = model
        self.traced = traced

    def __call__(self, *args, **kwargs):
        if self.model.training:
            return type(self.model).forward(self.model, *args, **kwargs)
        # the traced module's own forward, not its __call__: it is ours (no user hooks can be on
        # it), and the user's model already went through nn.Module.__call__ with its hooks
        return self.traced.forward(*args, **kwargs)


def uninstall(model: nn.Module) -> None:
    """Give ``model`` and its BatchNorm modules back their classes' own ``forward`` (no-op without
    chains or affines)."""
    _batchnorm.uninstall(model)
    if "_edl_chains" in model.__dict__:
        model.__dict__.pop("forward", None)
        del model.__dict__["_edl_chains"]


def installed(model: nn.Module) -> ChainReport | None:
    """The :class:`ChainReport` of the chains installed on ``model``, or ``None``."""
    return model.__dict__.get("_edl_chains")


__all__ = ["LinearChain", "ChainReport", "install", "uninstall", "installed"]
