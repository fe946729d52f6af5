"""What every ``edl`` command shares: the parser class, argument types, common options and helpers.

Nothing here imports torch at module level: ``edl --help``, ``edl --version`` and
``edl info FILE`` must start fast, so heavy modules are imported inside the functions
that need them (and the choices they own are read only when a command's parser is built).
"""

from __future__ import annotations

import argparse
import sys
import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..core.options import Option
from ..errors import EdlError


class UsageError(EdlError):
    """A command-line argument is wrong."""


_FROM_ARGS = object()   # _load_model: the model named by the command's --model


#: the longest error line ``edl`` prints (a longer message is cut, ending in "…")
MAX_ERROR_LINE = 300


def error_line(prog: str, message: str) -> str:
    """``PROG: error: MESSAGE`` on one line (whitespace runs joined) of at most :data:`MAX_ERROR_LINE` characters."""
    line = f"{prog}: error: {' '.join(str(message).split())}"
    return line if len(line) <= MAX_ERROR_LINE else line[:MAX_ERROR_LINE - 1] + "…"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, error_line(self.prog, message) + "\n")


def names(table: Iterable[str] | Any) -> list[str]:
    """The names of a registry (``.names()``) or of a plain tuple/mapping of names.

    Choices are read from where they are defined (``models.available()``,
    ``compress.methods.METHODS``, ``train.trainer.OPTIMIZERS`` …); this accepts both the
    tuples of today and :class:`efficientdl.core.registry.Registry` objects.
    """
    return list(table.names()) if hasattr(table, "names") else list(table)


# --------------------------------------------------------------------------- argument types
#: numbers on the command line, range-checked by the same :class:`~efficientdl.core.options.Option` as recipes
_positive_int = Option("value", int, low=1)
_nonneg_int = Option("value", int, low=0)
_positive_float = Option("value", float, low=0, low_open=True)
_nonneg_float = Option("value", float, low=0)
_fraction = Option("value", float, low=0, high=1)


def _input_shape(text: str) -> tuple[int, ...]:
    """``C,H,W`` (or ``CxHxW``): one sample's shape, positive integers."""
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like C,H,W such as 1,28,28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected a shape like C,H,W such as 1,28,28, got {text!r}")
    return dims


def _scalar(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def per_layer_spec(text: str) -> Any:
    """Parse ``0.9`` or ``fc1=0.92,fc2=0.91,default=0.8`` into a number or a mapping."""
    if "=" not in text:
        return _scalar(text)
    spec = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by commas, got {text!r}")
        spec[key.strip()] = _scalar(value.strip())
    return spec


def pattern_spec(text: str) -> Any:
    """Parse ``2:4`` or ``fc1=2:4,fc2=4:8`` (N:M sparsity per layer) into a string or a mapping."""
    def one(value: str) -> str:
        parts = value.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) < 1 or int(parts[0]) > int(parts[1]):
            raise argparse.ArgumentTypeError(f"expected a pattern N:M with 0 ≤ N ≤ M such as 2:4, got {value!r}")
        return value
    if "=" not in text:
        return one(text.strip())
    spec = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=N:M pairs separated by commas, got {text!r}")
        spec[key.strip()] = one(value.strip())
    return spec


def methods() -> list[str]:
    """The methods of ``edl compare``, read from :mod:`efficientdl.compress.methods` (imports torch)."""
    from ..compress.methods import METHODS

    return names(METHODS)


def _method_list(text: str) -> list[str]:
    known = methods()
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in chosen if n not in known]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r} "
                                         f"(expected some of {', '.join(known)})")
    return chosen


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 or v > 16 for v in values):
        raise argparse.ArgumentTypeError(f"expected bit widths in 1..16, got {text!r}")
    return values


def _image_size(text: str) -> tuple[int, int]:
    """``28`` or ``32x48`` (height × width) as ``(H, W)``."""
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a size S or HxW in pixels such as 28 or 32x48, got {text!r}")
    sizes = [int(p) for p in parts]
    return (sizes[0], sizes[-1])


def _number_list(text: str) -> list[float]:
    """``0.5`` or ``0.485,0.456,0.406``: finite numbers, one or one per channel."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected a number or numbers separated by commas, got {text!r}")
    return values


def _json_object(text: str) -> dict:
    """A JSON object of keyword arguments, ``'{"width": 16}'``."""
    from ..errors import ModelError
    from ..models.user import parse_kwargs

    try:
        return parse_kwargs(text, "JSON")
    except ModelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _model_name(text: str) -> str:
    """A registry name or an import path ``MODULE:CALLABLE`` (its form checked here, its code imported later)."""
    from ..errors import ModelError
    from ..models.user import is_import_path, parse_import_path

    if is_import_path(text):
        try:
            parse_import_path(text)
        except ModelError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    elif not text.strip():
        raise argparse.ArgumentTypeError("expected a registry name or MODULE:CALLABLE, got ''")
    return text.strip()


def _output_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p}: is a directory, expected an output file path")
    if not p.parent.exists():
        raise UsageError(f"{p.parent}: output directory does not exist")
    return p


def _output_dir(path: str) -> Path:
    """An output directory argument, checked and declared but not created: the atomic writer
    (:func:`efficientdl.core.files.atomic_open`) creates it with the first file written into it."""
    from ..core.files import declare_output_directory

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{p}: exists and is not a directory")
    blocker = next((q for q in p.parents if q.exists() and not q.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"{blocker}: exists and is not a directory (in output path {p})")
    declare_output_directory(p)
    return p


def _input_file(path: str) -> Path:
    """An existing, readable regular file (a FIFO or device would block or never end)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file")
    if p.is_dir():
        raise UsageError(f"{p}: is a directory, expected a file")
    if not p.is_file():
        raise UsageError(f"{p}: is not a regular file")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise UsageError(f"{p}: cannot read ({e.strerror or e})") from None
    return p


# --------------------------------------------------------------------------- recipes shipped as package data
def packaged_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (``efficientdl/recipes/NAME.yaml``)."""
    folder = resources.files("efficientdl") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder.is_dir() else []


def packaged_recipe(name: str) -> Path:
    """The path of the shipped recipe ``name`` (``lenet300`` → ``…/efficientdl/recipes/lenet300.yaml``).

    Resolved through :mod:`importlib.resources`, so it works from a checkout and from an
    installed wheel alike (the package is installed as files, so the resource is a path).

    Raises:
        UsageError: no such shipped recipe (the known ones listed).
    """
    resource = resources.files("efficientdl") / "recipes" / f"{name}.yaml"
    if not resource.is_file():
        raise UsageError(f"{name}: no such recipe file, and not a shipped recipe "
                         f"(one of {', '.join(packaged_recipes()) or 'none'})")
    return Path(str(resource))


def recipe_path(text: str) -> Path:
    """A recipe argument: a file path, or the bare name of a shipped recipe when no such file exists."""
    p = Path(text)
    if not p.exists() and p.suffix == "" and p.name == text and text in packaged_recipes():
        return packaged_recipe(text)
    return _input_file(text)


# --------------------------------------------------------------------------- options shared by commands
def add_common_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    """``--json``, ``--debug``, ``--seed`` and (with ``data``) the dataset options."""
    p.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    if data:
        from ..data.datasets import KNOWN_DATASETS

        known = names(KNOWN_DATASETS)
        g = p.add_argument_group("data")
        g.add_argument("--data", default=None if p.prog.endswith(("compress", "demo", "eval")) else "fashion-mnist",
                       help=f"dataset: {', '.join(known)}, or your own: a directory of images in class sub-folders "
                            "(DIR/CLASS/*.png), a .npz with x and y (optional x_test, y_test), or MODULE:CALLABLE "
                            "returning (train, test) batches (default fashion-mnist; for eval, "
                            "the one the file was compressed on)")
        g.add_argument("--data-dir", help="directory with the IDX files (default: $EDL_DATA_DIR, "
                                          "then /usr/share/datasets/fashion-mnist)")
        g.add_argument("--image-size", type=_image_size, help="your images resized to S or HxW (default: the first "
                                                             "image's size)")
        g.add_argument("--channels", type=int, choices=[1, 3],
                       help="your images as 1 (grey-scale) or 3 (RGB) channels (default: 1 if all are grey)")
        g.add_argument("--mean", type=_number_list, help="per-channel mean to subtract from your data: 0.5 or "
                                                         "0.485,0.456,0.406 (default: the training split's)")
        g.add_argument("--std", type=_number_list, help="per-channel standard deviation to divide by (default: the "
                                                        "training split's)")
        g.add_argument("--batch-size", type=_positive_int,
                       default=None if p.prog.endswith(("compress", "demo")) else 128)
        g.add_argument("--train-subset", type=_positive_int, help="train on the first N images of a seeded permutation")
        g.add_argument("--test-subset", type=_positive_int, help="test on N images")
        g.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")


def add_training_options(p: argparse.ArgumentParser, epochs: int | None, lr: float, weight_decay: float = 5e-4,
                         epochs_help: str | None = None) -> None:
    """The trainer's options with these defaults; types, ranges and choices are the declared
    :data:`efficientdl.train.options.TRAIN_OPTIONS` (an :class:`~efficientdl.core.options.Option` parses and
    range-checks), so the command line accepts what a recipe and :class:`~efficientdl.train.Trainer` accept."""
    from ..train.options import PRECISION, TRAIN_OPTIONS as T

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=T["epochs"], default=epochs, help=epochs_help or f"epochs (default {epochs})")
    g.add_argument("--lr", type=T["lr"], default=lr, help=f"learning rate (default {lr})")
    g.add_argument("--optimizer", choices=names(T["optimizer"].choices), default=T["optimizer"].default,
                   help="sgd (with --momentum) or adam (default sgd)")
    g.add_argument("--momentum", type=T["momentum"], default=T["momentum"].default)
    g.add_argument("--weight-decay", type=T["weight_decay"], default=weight_decay)
    g.add_argument("--schedule", choices=names(T["schedule"].choices), default=T["schedule"].default)
    g.add_argument("--warmup-epochs", type=T["warmup_epochs"], default=T["warmup_epochs"].default,
                   help="linear learning-rate warmup over this many epochs (default 0)")
    g.add_argument("--clip-grad-norm", type=T["clip_grad_norm"], default=None,
                   help="clip the global gradient L2 norm to this value (default: no clipping)")
    g.add_argument("--precision", choices=names(PRECISION.choices), default=PRECISION.default,
                   help="fp32; mixed: fp16 model + fp32 master weights + dynamic loss scaling; "
                        "bf16 / fp16: torch.amp autocast (fp16 with a GradScaler)")
    add_log_dir_option(g)


def add_log_dir_option(p: argparse.ArgumentParser | Any) -> None:
    """``--log-dir DIR``: TensorBoard scalars of every training epoch
    (:class:`~efficientdl.train.loggers.TensorBoardLogger`)."""
    p.add_argument("--log-dir", help="write TensorBoard events of every training epoch there (loss, accuracy, "
                                     "learning rate, sparsity, loss scale; needs: pip install tensorboard)")


def model_help(prefix: str = "registry name") -> str:
    """``--model`` help naming the registered models (read from :func:`efficientdl.models.available`)."""
    from .. import models

    return (f"{prefix}: {', '.join(models.available())} (default lenet300), or your own nn.Module: "
            "MODULE:CALLABLE (imported, the current directory first, and called with --model-kwargs)")


def add_model_options(p: argparse.ArgumentParser, loads_file: bool = True, checkpoint: bool = False) -> None:
    """The options of your own model.

    Args:
        p: the command's parser.
        loads_file: the command reads a model file: add ``--model`` (dest ``user_model``: the
            network to build and load the file into) and ``--trust-model-code``; else the
            command's own ``--model`` builds the network and only ``--model-kwargs`` is added.
        checkpoint: also add ``--checkpoint FILE`` (start the built network from its weights).
    """
    g = p.add_argument_group("your model")
    if loads_file:
        g.add_argument("--model", dest="user_model", type=_model_name, metavar="MODULE:CALLABLE",
                       help="build this network (your callable, or a registry name) and load the file's weights "
                            "into it; needed for a plain state dict (default: what the file records)")
    g.add_argument("--model-kwargs", type=_json_object, metavar="JSON",
                   help="keyword arguments of the model's callable, e.g. '{\"width\": 16}' (over those a file "
                        "records)")
    if loads_file:
        g.add_argument("--trust-model-code", action="store_true",
                       help="import and run the model code a file names (a file never imports code on its own)")
    if checkpoint:
        g.add_argument("--checkpoint", help="start from these weights: a checkpoint (.pt), a plain "
                                            "torch.save(state_dict) or a compressed file (.edlz)")


def add_subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str,
                    table: Mapping[str, tuple[str, Callable[[argparse.ArgumentParser], None]]],
                    only: str | None = None) -> None:
    """Sub-commands of a command group (``edl hw …``, ``edl recipe …``) from a table name → (help, add).

    Args:
        parser: the group's parser.
        dest: where the chosen sub-command's name goes (``"hw_command"``).
        metavar: its name in usage lines.
        table: name → (one-line help, a function adding the sub-command's options and handler).
        only: build only this sub-command's options (``main`` passes the one on the command line);
            the others get their name and help only.  ``None`` builds them all.
    """
    sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser, required=True)
    for name, (help_line, add) in table.items():
        p = sub.add_parser(name, help=help_line)
        if only is None or only == name:
            add(p)


# --------------------------------------------------------------------------- helpers of the commands
def _console():
    """The console of messages on standard error (:func:`efficientdl.core.console.stderr_console`:
    plain, unwrapped lines without escape codes when it is not a terminal)."""
    from ..core.console import stderr_console

    return stderr_console()


def _load_data(args: argparse.Namespace, name: str | None = None, say: bool = True):
    """The data set ``--data`` names (or ``name``); ``say`` prints the ``data: …`` line (not with ``--json``)."""
    from .. import data

    ds = data.load(name or args.data, data_dir=args.data_dir, batch_size=args.batch_size,
                   train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed,
                   image_size=getattr(args, "image_size", None), channels=getattr(args, "channels", None),
                   mean=getattr(args, "mean", None), std=getattr(args, "std", None))
    if say and not args.json:
        _console().print(f"data: {ds.name} ({ds.source})")
    return ds


def _data_and_model(args: argparse.Namespace, model_args: argparse.Namespace | None = None,
                    checkpoint: str | None = None):
    """``(data, fresh network)`` for a training command (see :func:`_build_model`); the ``data: …`` line
    is printed only once both exist, so a model that cannot be built fails with one line."""
    ds = _load_data(args, say=False)
    model = _build_model(model_args or args, ds, checkpoint=checkpoint)
    if not args.json:
        _console().print(f"data: {ds.name} ({ds.source})")
    return ds, model


def _is_container(path: Path) -> bool:
    """Whether ``path`` is a compressed file (asks :mod:`efficientdl.format`, the owner of the bytes)."""
    from ..format import is_container

    return is_container(path)


def _load_model(path: Path, args: argparse.Namespace | None = None, runtime: str = "dense", model: Any = _FROM_ARGS,
                **load_options: Any):
    """A plain model from a checkpoint (``.pt``, or a plain ``torch.save(state_dict)``) or a compressed
    file (``.edlz``).

    Args:
        path: the file.
        args: the command's arguments: ``--model`` (``args.user_model``: the network to build and
            load into), ``--model-kwargs``, ``--trust-model-code`` (import the code the file names).
        runtime: ``dense`` or ``compressed`` (a compressed file only).
        model: the network to build instead of ``args.user_model`` (a registry name or import path).
        load_options: further options of :func:`efficientdl.format.load` (``prefer``, ``cache``).

    Returns:
        The model in eval mode.

    Raises:
        UsageError: the file's model is user code (or unrecorded) and neither ``--model`` nor
            ``--trust-model-code`` was given — the line says what to pass.
    """
    from .. import format as fmt
    from ..models.user import ModelCodeNeeded
    from ..train import load_checkpoint

    options = _model_options(args, model)
    try:
        if _is_container(path):
            return fmt.load(path, runtime=runtime, **options, **load_options)
        return load_checkpoint(path, **options)
    except ModelCodeNeeded as e:
        raise _code_needed(e) from None


def _model_options(args: argparse.Namespace | None, model: Any = _FROM_ARGS) -> dict:
    """``model``, ``model_kwargs`` and ``trust_model_code`` for :func:`efficientdl.format.load` and
    :func:`efficientdl.train.load_checkpoint`, from ``--model``, ``--model-kwargs``, ``--trust-model-code``."""
    return dict(model=getattr(args, "user_model", None) if model is _FROM_ARGS else model,
                model_kwargs=getattr(args, "model_kwargs", None),
                trust_model_code=getattr(args, "trust_model_code", False))


def _code_needed(error) -> UsageError:
    """The command-line wording of :class:`~efficientdl.models.user.ModelCodeNeeded`: what to pass."""
    if error.spec is None:
        return UsageError(f"{error.where}: records no architecture (a plain state dict?); pass --model "
                          "MODULE:CALLABLE (or a registry name) to build the network it fits")
    return UsageError(f"{error.where}: the model is built by your code {error.spec}, which edl never imports on "
                      f"its own; pass --model {error.spec} (or --trust-model-code) to use it")


def _build_model(args: argparse.Namespace, ds, model: str | None = None, checkpoint: str | None = None):
    """A fresh network for ``ds``: the registry name or import path ``model`` (default ``args.model``)
    with ``--model-kwargs``, the data's classes, channels and (square) image size filled in where the
    constructor takes them; or, with ``checkpoint``, that network loaded from the file (any form
    :func:`_load_model` reads), in training mode."""
    from .. import models

    spec = model or args.model
    if checkpoint:
        return _load_model(_input_file(checkpoint), args, model=spec).train()
    shape = ds.input_shape
    return models.build(spec, num_classes=ds.num_classes, in_channels=shape[0],
                        kwargs=getattr(args, "model_kwargs", None),
                        input_size=shape[1] if len(shape) == 3 and shape[1] == shape[2] else None)


def _emit(args: argparse.Namespace, result: dict, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or ``text``."""
    from ..report.render import dumps

    if args.json:
        print(dumps(result))
    else:
        print(text)


def _emit_blocks(args: argparse.Namespace, result: dict, blocks: list) -> None:
    """Print ``result`` as JSON (``--json``), else ``blocks`` — lines of text and
    ``(rows, header)`` tables — as real tables in a terminal and as Markdown otherwise (a
    pipe, a file, a log), so the same command reads well on screen and pastes into a page."""
    from ..core.console import is_tty
    from ..report.render import format_cell, markdown_table

    if args.json:
        _emit(args, result, "")
        return
    if not is_tty(sys.stdout):
        print("\n".join(b if isinstance(b, str) else markdown_table(*b) for b in blocks))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    for block in blocks:
        if isinstance(block, str):
            console.print(block, markup=False)
            continue
        rows, header = block
        table = Table(*header)
        table.columns[0].no_wrap = True            # names whole; the numbers' headers wrap instead
        table.columns[0].min_width = max([len(format_cell(r[0])) for r in rows] + [len(header[0])])
        for i, name in enumerate(header):
            if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows):
                table.columns[i].justify = "right"
        for row in rows:
            table.add_row(*(format_cell(v) for v in row))
        console.print(table)


def _trainer(args: argparse.Namespace, ds, teacher=None, **overrides):
    from ..train import Trainer

    opts = dict(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                schedule=args.schedule, precision=getattr(args, "precision", "fp32"),
                warmup_epochs=getattr(args, "warmup_epochs", 0.0), clip_grad_norm=getattr(args, "clip_grad_norm", None),
                optimizer=getattr(args, "optimizer", "sgd"), loggers=_epoch_loggers(args))
    opts.update(overrides)
    return Trainer(ds.train, ds.test, seed=args.seed, progress=not (args.no_progress or args.json),
                   teacher=teacher, **opts)


def _epoch_loggers(args: argparse.Namespace) -> list:
    """The per-epoch loggers ``--log-dir`` asks for: one :class:`~efficientdl.train.loggers.TensorBoardLogger`
    shared by every trainer of the command (its steps count on across fits), or none.

    Raises:
        DependencyError: ``--log-dir`` without the tensorboard package (the message has the pip command).
    """
    if not getattr(args, "log_dir", None):
        return []
    logger = getattr(args, "_epoch_logger", None)
    if logger is None:
        from ..train.loggers import TensorBoardLogger

        logger = args._epoch_logger = TensorBoardLogger(args.log_dir)
    return [logger]


def _seed(args: argparse.Namespace) -> None:
    from ..train import set_seed

    set_seed(args.seed)
