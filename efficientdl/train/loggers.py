"""Per-epoch loggers a :class:`~efficientdl.train.Trainer` reports to.

A logger is any object with ``log_epoch(record, model, description)``; the trainer calls
it after every epoch with that epoch's record (the dict :meth:`Trainer.fit` returns one
of per epoch), and, when the logger has one, ``flush()`` at the end of every fit.

:class:`TensorBoardLogger` writes the record's scalars as TensorBoard events
(``torch.utils.tensorboard.SummaryWriter``; needs the ``tensorboard`` package, the
``efficientdl[tensorboard]`` extra).  One logger may serve several fits (pruning steps
and their retraining, centroid fine-tuning, the methods of ``edl compare``): its step
counts epochs across all of them, so the curves of a whole run follow each other, and
the description of each fit is logged as text at the step where it starts.

Example::

    from efficientdl.train import Trainer
    from efficientdl.train.loggers import TensorBoardLogger

    with TensorBoardLogger("runs/tb/lenet300") as tb:
        Trainer(data.train, data.test, epochs=3, loggers=[tb]).fit(model)
    # tensorboard --logdir runs/tb
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from ..errors import DataError, DependencyError

#: record key → TensorBoard tag of the scalars logged (keys missing from a record are skipped)
SCALARS = {
    "train_loss": "loss/train",
    "train_accuracy": "accuracy/train",
    "test_accuracy": "accuracy/test",
    "lr": "learning_rate",
    "sparsity": "sparsity",
    "loss_scale": "loss_scale",
}

#: how to install what ``--log-dir`` needs
INSTALL = "pip install 'efficientdl[tensorboard]' (or: pip install tensorboard)"


class EpochLogger(Protocol):
    """What a :class:`~efficientdl.train.Trainer` calls after each epoch."""

    def log_epoch(self, record: dict, model: Any, description: str) -> None:
        """Take one epoch's record (``epoch``, ``lr``, ``train_loss``, …) of the fit named ``description``."""


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        DependencyError: the ``tensorboard`` package is not installed (the message says how to install it).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DependencyError(f"TensorBoard logging needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


class TensorBoardLogger:
    """Scalars of every epoch record as TensorBoard events in ``log_dir``.

    Tags (:data:`SCALARS`): ``loss/train``, ``accuracy/train``, ``accuracy/test``,
    ``learning_rate`` (the rate at the epoch's start), and where the record has them
    ``sparsity`` (a pruned model's) and ``loss_scale`` (mixed precision).  The step is
    the number of epochs logged so far, over every fit this logger served (1, 2, …).

    The event file is created at the first epoch, not before: a command that fails
    before training leaves nothing behind.  The writer is flushed after every epoch.

    Args:
        log_dir: the directory of the event files (created when needed).

    Raises:
        DependencyError: the ``tensorboard`` package is not installed.
        DataError: ``log_dir`` exists and is not a directory.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = Path(log_dir)
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise DataError(f"{self.log_dir}: exists and is not a directory (expected a log directory)")
        self._writer_class = summary_writer_class()
        self._writer = None
        self.step = 0
        self._last_description: str | None = None

    @property
    def writer(self):
        """The ``SummaryWriter`` (created on first use)."""
        if self._writer is None:
            try:
                self._writer = self._writer_class(log_dir=str(self.log_dir))
            except OSError as e:
                raise DataError(f"{self.log_dir}: cannot write TensorBoard events ({e.strerror or e})") from None
        return self._writer

    def log_epoch(self, record: dict, model: Any = None, description: str = "train") -> None:
        """Write the scalars of one epoch's ``record`` at the next step.

        Args:
            record: the epoch's record (see :meth:`~efficientdl.train.Trainer.fit`).
            model: the model being trained (unused; part of the logger protocol).
            description: the fit's label; logged as text when a new fit starts.
        """
        self.step += 1
        writer = self.writer
        if record.get("epoch") == 1 or description != self._last_description:
            writer.add_text("fit", description, self.step)
            self._last_description = description
        for key, tag in SCALARS.items():
            value = record.get(key)
            if value is not None:
                writer.add_scalar(tag, float(value), self.step)
        writer.flush()

    def flush(self) -> None:
        """Write pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later epoch opens a new one in the same directory)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
