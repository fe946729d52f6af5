"""Training, evaluation and checkpoints.

Deep Compression (Han et al.) retrains the network after each compression stage:
after pruning, to let the surviving connections compensate, and after weight
sharing, to fine-tune the shared centroids.  :class:`Trainer` is that loop: SGD with
momentum and weight decay, a cosine / step / constant learning-rate schedule with an
optional linear warmup, optional gradient-norm clipping, and optional knowledge
distillation from a teacher (Hinton et al., "Distilling the Knowledge in a Neural
Network").

Compression stages express masks and codebooks as ``torch.nn.utils.parametrize``
parametrizations; the trainer simply optimises ``model.parameters()``, so gradients
flow through the parametrizations untouched.  :func:`plain_state_dict` folds them
back into ordinary ``weight`` tensors for checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.utils import parametrize

from efficientdl.core.console import live, stderr_console
from efficientdl.core.files import atomic_open
from efficientdl.core.parametrize import plain_state_dict
from efficientdl.core.state import renew_weight_claims, weight_mask
from efficientdl.errors import DataError, ModelError, RecipeError

from efficientdl.train.options import (DISTILL_OPTIONS, OPTIMIZERS, PRECISION, PRECISIONS,  # noqa: F401
                                       SCHEDULES, TRAIN_OPTIONS)
#: precisions that run under torch.autocast (bf16 without scaling; fp16 with a GradScaler)
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and CUDA).

    Args:
        seed: any integer; NumPy receives it modulo 2**32.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the body from :func:`set_seed` ``(seed)`` and give the caller its generators back afterwards.

    Python's ``random``, NumPy's global generator and PyTorch's CPU generator (and, when
    ``device`` is a GPU or CUDA is already in use, the CUDA generators) are saved, seeded,
    and restored on exit — as ``torch.random.fork_rng`` does for PyTorch — so the body is
    reproducible from ``seed`` and the caller's random streams continue as if it had not
    run.

    Args:
        seed: the seed of the body.
        device: the device the body computes on.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices: list[int] = []
    if torch.cuda.is_available() and (torch.cuda.is_initialized() or (device is not None and device.type == "cuda")):
        devices = list(range(torch.cuda.device_count()))
    try:
        with torch.random.fork_rng(devices=devices):
            set_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def parametrization_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that parametrization objects own themselves.

    These are what a method adds beside the stored tensor: the centroids of weight
    sharing (``SharedWeight.centroids``), the scales of trained ternary quantization
    (``TernaryWeight.wp``/``wn``) — found by where they live (a module inside a
    ``module.parametrizations[name]`` chain), not by their names.  The stored tensor
    itself (``parametrizations[name].original``) is not among them.
    """
    owned: set[int] = set()
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for chain in module.parametrizations.values():
                for p in chain:                      # the parametrization objects, not `original`
                    owned.update(id(q) for q in p.parameters())
    return owned


def decays(model: nn.Module, parameters: list[nn.Parameter]) -> list[bool]:
    """Which of ``parameters`` (of ``model``) weight decay applies to, as nanoGPT's ``configure_optimizers``.

    Decay for tensors with at least two dimensions (the weight matrices and kernels); none
    for 1-D ones (biases, normalisation scales and shifts) and none for the parameters of
    parametrizations (:func:`parametrization_parameters`: codebooks, centroids, scales).
    """
    owned = parametrization_parameters(model)
    return [p.dim() >= 2 and id(p) not in owned for p in parameters]


def parameter_groups(parameters: list, decay: list[bool], weight_decay: float) -> list[dict]:
    """Two optimiser groups: ``decay`` marks the parameters with ``weight_decay``, the others get 0."""
    groups = [{"params": [p for p, d in zip(parameters, decay) if d], "weight_decay": weight_decay},
              {"params": [p for p, d in zip(parameters, decay) if not d], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy: the fraction of samples whose largest logit is the true class.

    ``accuracy = (1/N) * sum_i [argmax_k f(x_i)_k == y_i]``.  The model runs in
    evaluation mode without gradients and is restored to its previous mode after.

    Args:
        model: a classifier returning ``N x classes`` logits.
        loader: any iterable of ``(x, y)`` batches.
        device: where to run.

    Returns:
        Accuracy in [0, 1].

    Raises:
        DataError: the loader yields no samples.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else None   # an fp16 model takes fp16 input
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if dtype is not None and x.is_floating_point() and x.dtype != dtype:
                x = x.to(dtype)
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("evaluate: the loader yielded no samples (expected at least one batch)")
    return correct / total


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Knowledge-distillation loss of Hinton et al.

    ``L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``

    with student logits ``s``, teacher logits ``t``, temperature ``T`` and labels
    ``y``.  The ``T^2`` factor keeps the soft-target gradients on the scale of the
    hard-label ones.  Both terms are averaged over the batch.

    Args:
        student_logits: ``N x K`` student outputs.
        teacher_logits: ``N x K`` teacher outputs (no gradient needed).
        targets: ``N`` class indices.
        temperature: softening temperature ``T`` > 0.
        alpha: weight of the soft term in [0, 1].

    Returns:
        The scalar loss.
    """
    log_p_student = nn.functional.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = nn.functional.log_softmax(teacher_logits / temperature, dim=1)
    soft = nn.functional.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    hard = nn.functional.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


class Trainer:
    """SGD training loop with learning-rate schedules, progress display and distillation.

    Loss: cross-entropy, or with a ``teacher`` the :func:`distillation_loss`.
    Optimiser: SGD with momentum and weight decay over the parameters that require
    gradients (parametrization originals included, so masks and codebooks train
    through their parametrizations).

    Weight decay (L2, ``w ← w − lr · (g + λ w)`` for SGD) applies, as in nanoGPT's
    ``configure_optimizers``, only to parameters with at least two dimensions that are
    not owned by a parametrization (:func:`decays`): biases, normalisation scales and
    the centroids of weight sharing are not pulled towards zero.

    Schedules (``lr0`` = base rate, ``p`` = fraction of all steps done):
        ``"cosine"``: ``lr = lr0 * (1 + cos(pi * p)) / 2``, updated every step.
        ``"step"``: ``lr0``, times 0.1 from epoch ``0.5 * epochs``, times 0.01 from
        epoch ``0.75 * epochs`` (0-based epoch index).
        ``"constant"``: ``lr0``.

    Warmup (Goyal et al., "Accurate, Large Minibatch SGD", 2017): with
    ``warmup_epochs = w`` the first ``W = ceil(w * steps_per_epoch)`` steps of a
    :meth:`fit` (``k = 0 … W − 1``, counted over all epochs) use the scheduled rate times
    ``(k + 1) / W``, a linear ramp from ``lr/W`` to the full rate (a loader without
    ``len`` counts as one step per epoch).  Together with clipping it keeps the first
    updates of a network without normalisation layers (the 28×28 SqueezeNet) from
    killing its ReLUs.

    Gradient clipping (Pascanu, Mikolov, Bengio, "On the difficulty of training
    recurrent neural networks", ICML'13): with ``clip_grad_norm = c`` every step rescales
    all gradients by ``min(1, c / ‖g‖₂)``, where ``‖g‖₂`` is the L2 norm of all of them
    concatenated, so one step never moves the weights by more than ``lr · c`` (before
    momentum and weight decay).

    Args:
        train_loader: iterable of ``(x, y)`` batches; if it has ``set_epoch`` it is
            called with the 0-based epoch index before each pass.
        test_loader: optional loader evaluated after each epoch.
        epochs: default number of epochs for :meth:`fit`.
        lr: default base learning rate.
        momentum: SGD momentum (unused by Adam).
        weight_decay: L2 penalty coefficient ``λ`` of the weight matrices (see above).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"`` (Kingma & Ba, ICLR'15, with
            torch's defaults β = (0.9, 0.999), ε = 1e-8); the schedule sets either one's rate.
        schedule: ``"cosine"``, ``"step"`` or ``"constant"``.
        warmup_epochs: length of the linear warmup in epochs (a fraction is allowed;
            0 = none).  A training loader without ``len`` has no known epoch length:
            the warmup then lasts ``ceil(warmup_epochs)`` steps.
        clip_grad_norm: largest global gradient L2 norm (``None`` = no clipping).
        seed: the random state of each :meth:`fit` (dropout, a loader shuffling with the
            global generator): every fit runs from :func:`set_seed` ``(seed)`` inside
            :func:`seeded`, so fits with the same seed are reproducible and the caller's
            global generators are left where they were (neither reseeded nor advanced).
        progress: show a transient progress bar (only where the console is a terminal,
            :func:`efficientdl.core.console.live`) and one line per epoch, never wrapped.
        device: where to train.
        teacher: optional distillation teacher, kept in evaluation mode, no gradient.
        kd_temperature: distillation temperature ``T``.
        kd_alpha: weight of the soft term.
        console: rich console for the output (default:
            :func:`efficientdl.core.console.stderr_console`, standard error: bars in a
            terminal, plain lines without escape codes elsewhere).
        loggers: per-epoch loggers (:mod:`efficientdl.train.loggers`, e.g. a
            :class:`~efficientdl.train.loggers.TensorBoardLogger`): each one's
            ``log_epoch(record, model, description)`` is called after every epoch, and its
            ``flush()`` (if it has one) at the end of every fit.

    Raises:
        RecipeError: a hyper-parameter out of range or an unknown schedule.
    """

    def __init__(
        self,
        train_loader: Iterable,
        test_loader: Iterable | None = None,
        epochs: int = 10,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        seed: int = 0,
        progress: bool = True,
        device: str | torch.device = "cpu",
        teacher: nn.Module | None = None,
        kd_temperature: float = 4.0,
        kd_alpha: float = 0.9,
        console: Console | None = None,
        precision: str = "fp32",
        warmup_epochs: float = 0.0,
        clip_grad_norm: float | None = None,
        optimizer: str = "sgd",
        loggers: Sequence = (),
    ) -> None:
        settings = {"optimizer": optimizer, "schedule": schedule, "epochs": epochs, "lr": lr, "momentum": momentum,
                    "weight_decay": weight_decay, "warmup_epochs": warmup_epochs}
        for name, value in settings.items():
            TRAIN_OPTIONS[name].check(value, "trainer")
        for name, value in (("kd_temperature", kd_temperature), ("kd_alpha", kd_alpha)):
            DISTILL_OPTIONS[name].check(value, "trainer")
        PRECISION.check(precision, "trainer")
        if clip_grad_norm is not None:
            TRAIN_OPTIONS["clip_grad_norm"].check(clip_grad_norm, "trainer")
            if precision == "mixed":
                raise RecipeError("trainer: clip_grad_norm is not supported with precision 'mixed' "
                                  "(expected fp32, bf16 or fp16)")
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.seed = seed
        self.progress = progress
        self.device = torch.device(device)
        self.teacher = teacher
        self.kd_temperature = kd_temperature
        self.kd_alpha = kd_alpha
        self.console = console if console is not None else stderr_console()
        self.precision = precision
        self.warmup_epochs = warmup_epochs
        self.clip_grad_norm = clip_grad_norm
        self.optimizer = optimizer
        self.loggers = list(loggers)

    def learning_rate(self, base_lr: float, epoch: int, epochs: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The scheduled learning rate at ``step`` of 0-based ``epoch``, warmup included
        (see the class docstring)."""
        warmup_steps = math.ceil(self.warmup_epochs * steps_per_epoch)
        step_index = epoch * steps_per_epoch + step
        ramp = (step_index + 1) / warmup_steps if step_index < warmup_steps else 1.0
        if self.schedule == "constant":
            return base_lr * ramp
        if self.schedule == "step":
            if epoch >= 0.75 * epochs:
                return base_lr * 0.01 * ramp
            if epoch >= 0.5 * epochs:
                return base_lr * 0.1 * ramp
            return base_lr * ramp
        done_fraction = step_index / max(1, epochs * steps_per_epoch)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * done_fraction)) * ramp

    def _loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return nn.functional.cross_entropy(logits, y)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(logits, teacher_logits, y, self.kd_temperature, self.kd_alpha)

    def _clip(self, optimizer: torch.optim.Optimizer) -> int:
        """Clip the gradients of the optimizer's parameters to ``clip_grad_norm``; 1 if they were clipped."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = float(nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
        return int(norm > self.clip_grad_norm)

    def fit(
        self, model: nn.Module, epochs: int | None = None, lr: float | None = None, description: str = "train",
        on_epoch: Callable[[nn.Module, dict], None] | None = None,
    ) -> list[dict]:
        """Train ``model`` in place.

        Args:
            model: the network; may carry parametrizations (masks, codebooks).
            epochs: overrides the trainer's ``epochs``.
            lr: overrides the trainer's base learning rate.
            description: label of the progress bar and epoch lines.
            on_epoch: called after each epoch with the model and that epoch's record
                (e.g. to follow how learned scales evolve).

        Returns:
            One dict per epoch: ``epoch`` (1-based), ``lr`` (at the epoch's start),
            ``train_loss`` (sample-weighted mean over the epoch), ``train_accuracy``
            (running, in training mode), ``clipped_steps`` (steps whose gradient norm
            exceeded ``clip_grad_norm``; only when clipping), ``skipped_steps`` and ``loss_scale``
            (only with precision ``mixed``), ``sparsity`` (only for a pruned model: the fraction
            of the weights of its masked tensors that the masks zero, :func:`masked_sparsity`),
            ``test_accuracy`` (only with a test loader), ``seconds`` (wall time of the epoch
            including the evaluation).

        Raises:
            RecipeError: bad ``epochs`` or ``lr``.
            ModelError: the loss became NaN or infinite (diverged).
            DataError: the training loader yielded no samples.
        """
        epochs = self.epochs if epochs is None else epochs
        base_lr = self.lr if lr is None else lr
        TRAIN_OPTIONS["epochs"].check(epochs, "trainer")
        TRAIN_OPTIONS["lr"].check(base_lr, "trainer")
        with seeded(self.seed, self.device):
            return self._fit(model, epochs, base_lr, description, on_epoch)

    def _fit(self, model: nn.Module, epochs: int, base_lr: float, description: str,
             on_epoch: Callable[[nn.Module, dict], None] | None) -> list[dict]:
        model.to(self.device)
        was_training = model.training
        teacher_was_training = self.teacher.training if self.teacher is not None else False
        if self.teacher is not None:
            self.teacher.to(self.device).eval()
        parameters = [p for p in model.parameters() if p.requires_grad]
        decay = decays(model, parameters)        # by position: the mixed path passes fp32 masters in this order
        if self.optimizer == "adam":
            make_optimizer = lambda ps: torch.optim.Adam(  # noqa: E731
                parameter_groups(ps, decay, self.weight_decay), lr=base_lr)
        else:
            make_optimizer = lambda ps: torch.optim.SGD(  # noqa: E731
                parameter_groups(ps, decay, self.weight_decay), lr=base_lr, momentum=self.momentum)
        self._mixed = self._grad_scaler = None
        if self.precision == "mixed":
            from .mixed_precision import MixedPrecisionOptimizer

            self._mixed = MixedPrecisionOptimizer(model, make_optimizer)
            optimizer = self._mixed.optimizer
        else:
            optimizer = make_optimizer(parameters)
            if self.precision == "fp16":
                self._grad_scaler = torch.amp.GradScaler(self.device.type)
        try:
            steps_per_epoch = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            steps_per_epoch = None
        history: list[dict] = []
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[accuracy]:.2%}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not (self.progress and live(self.console)),   # piped, CI, nohup: epoch lines only
        )
        try:
            with progress:
                for epoch in range(epochs):
                    history.append(self._epoch(model, optimizer, base_lr, epoch, epochs, steps_per_epoch, progress, description))
                    if on_epoch is not None:
                        on_epoch(model, history[-1])
                    for logger in self.loggers:
                        logger.log_epoch(history[-1], model, description)
        finally:
            for logger in self.loggers:
                if hasattr(logger, "flush"):
                    logger.flush()
            model.train(was_training)
            if self.teacher is not None:
                self.teacher.train(teacher_was_training)
            if self._mixed is not None:                 # hand back an fp32 model holding the master weights
                with torch.no_grad():
                    for p, master in zip(self._mixed.params, self._mixed.master):
                        p.data = master.detach().clone()
        return history

    def _epoch(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, base_lr: float, epoch: int, epochs: int,
        steps_per_epoch: int | None, progress: Progress, description: str,
    ) -> dict:
        started = time.perf_counter()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        model.train()
        task = progress.add_task(f"{description} {epoch + 1}/{epochs}", total=steps_per_epoch, loss=0.0, accuracy=0.0)
        epoch_lr = self.learning_rate(base_lr, epoch, epochs, 0, steps_per_epoch or 1)
        loss_sum = 0.0
        correct = seen = clipped = 0
        for step, (x, y) in enumerate(self.train_loader):
            lr_now = self.learning_rate(base_lr, epoch, epochs, step, steps_per_epoch or 1)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            x, y = x.to(self.device), y.to(self.device)
            if self._mixed is not None:                 # fp16 model, fp32 master weights, loss scaling
                out = {}

                def closure():
                    out["logits"] = model(x.half()).float()
                    return self._loss(out["logits"], x, y)

                loss_value = self._mixed.step(closure)
                logits = out["logits"]
            else:
                with torch.autocast(self.device.type, dtype=AUTOCAST.get(self.precision, torch.bfloat16),
                                    enabled=self.precision in AUTOCAST):
                    logits = model(x)
                    loss = self._loss(logits.float(), x, y)
                loss_value = float(loss.detach())
            if not math.isfinite(loss_value) and self._mixed is None:
                raise ModelError(
                    f"{description}: training diverged at epoch {epoch + 1} step {step + 1} "
                    f"(loss is {loss_value}; expected a finite loss, try a lower learning rate than {base_lr})"
                )
            if self._mixed is None:
                optimizer.zero_grad(set_to_none=True)
                if self._grad_scaler is not None:
                    self._grad_scaler.scale(loss).backward()
                    if self.clip_grad_norm is not None:
                        self._grad_scaler.unscale_(optimizer)       # clip the true gradients, not the scaled ones
                        clipped += self._clip(optimizer)
                    self._grad_scaler.step(optimizer)
                    self._grad_scaler.update()
                else:
                    loss.backward()
                    if self.clip_grad_norm is not None:
                        clipped += self._clip(optimizer)
                    optimizer.step()
            batch = int(y.numel())
            loss_sum += loss_value * batch
            correct += int((logits.detach().argmax(dim=1) == y).sum())
            seen += batch
            progress.update(task, advance=1, loss=loss_sum / seen, accuracy=correct / seen)
        progress.remove_task(task)
        if seen == 0:
            raise DataError(f"{description}: the training loader yielded no samples (expected at least one batch)")
        record = {"epoch": epoch + 1, "lr": epoch_lr, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
        if self.clip_grad_norm is not None:
            record["clipped_steps"] = clipped
        if self._mixed is not None:
            record["skipped_steps"] = self._mixed.scaler.skipped
            record["loss_scale"] = self._mixed.scaler.scale
        sparsity = masked_sparsity(model)
        if sparsity is not None:
            record["sparsity"] = sparsity
        if self.test_loader is not None:
            record["test_accuracy"] = evaluate(model, self.test_loader, self.device)
        record["seconds"] = time.perf_counter() - started
        if self.progress:
            test_text = f"  test acc {record['test_accuracy']:.2%}" if "test_accuracy" in record else ""
            self.console.print(
                f"{description} epoch {epoch + 1}/{epochs}  lr {epoch_lr:.4g}  loss {record['train_loss']:.4f}  "
                f"train acc {record['train_accuracy']:.2%}{test_text}  {record['seconds']:.1f}s",
                markup=False,
                highlight=False,
                soft_wrap=True,        # one line, however narrow the console
            )
        return record


def masked_sparsity(model: nn.Module) -> float | None:
    """The fraction of the weights of a pruned model's masked tensors that their masks zero.

    ``sparsity = (Σ_t |{i : M_t[i] = 0}|) / (Σ_t |M_t|)`` over the tensors ``t`` that carry a
    pruning mask (a :class:`~efficientdl.core.state.WeightMask` parametrization); tensors
    without a mask are not counted.

    Returns:
        The fraction in [0, 1], or ``None`` when no tensor of ``model`` carries a mask.
    """
    pruned = total = 0
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                mask = weight_mask(module, attr)
                if mask is not None:
                    total += mask.numel()
                    pruned += int(mask.numel() - int(mask.sum()))
    return pruned / total if total else None


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``{"arch": model.edl_arch or None, "state_dict": plain tensors}`` atomically.

    The file is written by ``torch.save`` to a temporary file in the target directory
    and moved over ``path`` with ``os.replace``, so readers never see a partial file
    (:func:`efficientdl.core.files.atomic_open`: the permissions of a plain ``open``,
    ``0o666 & ~umask``).
    It loads with ``torch.load(path, weights_only=True)``.  Parametrized weights are
    stored as their effective values (:func:`plain_state_dict`).

    Args:
        model: the network.
        path: destination file.

    Raises:
        DataError: the directory does not exist or is not writable, or the path is a directory.
    """
    path = Path(path)
    arch = getattr(model, "edl_arch", None)
    payload = {"arch": arch, "state_dict": plain_state_dict(model)}
    with atomic_open(path, DataError, " checkpoint") as stream:
        torch.save(payload, stream)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """The architecture record and the weights of a checkpoint, read with ``torch.load(weights_only=True)``.

    Accepts the files :func:`save_checkpoint` writes (``{"arch": ..., "state_dict": ...}``)
    and a plain ``torch.save(model.state_dict())`` (no architecture recorded).

    Args:
        path: the file.

    Returns:
        ``(arch, state_dict)``; ``arch`` is ``None`` for a plain state dict.

    Raises:
        DataError: missing, unreadable, or holding neither form.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found (expected a file written by save_checkpoint)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: not a readable checkpoint ({first_line[:200]})") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return payload.get("arch"), payload["state_dict"]
    if isinstance(payload, dict) and payload and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in payload.items()):
        return None, payload       # torch.save(model.state_dict())
    raise DataError(f"{path}: not a checkpoint (expected a dict with 'arch' and 'state_dict', "
                    "or a plain state dict of tensors)")


def load_checkpoint(path: str | os.PathLike, model: str | nn.Module | None = None,
                    model_kwargs: dict | None = None, trust_model_code: bool = False) -> nn.Module:
    """Rebuild a model from a checkpoint (see :func:`read_checkpoint` for the forms accepted).

    By default the architecture is rebuilt from the recorded ``arch``
    (:func:`efficientdl.models.rebuild`: a registry model and its transforms); the state
    dict is loaded strictly.  Loading uses ``torch.load(weights_only=True)``, so no code in
    the file is executed, and a record naming user code (``{"import": ...}``) is imported
    only with ``trust_model_code``.

    Args:
        path: the checkpoint file.
        model: the network to load into instead — a model object, or a registry name or
            import path ``MODULE:CALLABLE`` built with the recorded arguments (updated by
            ``model_kwargs``) and transforms.  Needed for a plain state dict.
        model_kwargs: keyword arguments over the recorded ones, for ``model`` given by name.
        trust_model_code: import the user code the record names.

    Returns:
        The model, in evaluation mode, on the CPU.

    Raises:
        DataError: missing or unreadable file, or not a checkpoint.
        ModelError: no architecture record and no ``model`` (or user code not trusted:
            :class:`~efficientdl.models.user.ModelCodeNeeded`), unknown architecture, or
            weights that do not fit it.
    """
    from efficientdl.models import rebuild

    path = Path(path)
    arch, state = read_checkpoint(path)
    if isinstance(model, nn.Module):
        built = model
    else:
        if model is None and arch is not None and not (
                isinstance(arch, dict) and isinstance(arch.get("kwargs", {}), dict)
                and (isinstance(arch.get("name"), str) or isinstance(arch.get("import"), str))):
            raise ModelError(f"{path}: checkpoint has no architecture record "
                             "(expected arch = {'name' or 'import': ..., 'kwargs': ...})")
        built = rebuild(arch, str(path), trust_model_code=trust_model_code, model=model, model_kwargs=model_kwargs)
    try:
        built.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        recorded = (arch.get("name") or arch.get("import")) if isinstance(arch, dict) else None
        label = model if isinstance(model, str) else recorded or type(built).__name__
        raise ModelError(f"{path}: weights do not fit model {label} ({detail[:300]})") from None
    renew_weight_claims(built)          # loading wrote the weights: confirm their quantizers
    return built.eval()
