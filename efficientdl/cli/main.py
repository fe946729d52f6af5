"""``edl``: the command line.  This module only dispatches; each command lives in a module of its group.

The command table maps a command's name to the module that declares its options beside
its handler (``add_NAME(parser)`` and ``cmd_NAME(args)``, as pip's ``commands/``) and to
its one-line help.  ``main`` builds only the parser of the command given on the command
line, so ``edl --help`` and ``edl --version`` import no command module and ``edl info``
imports only what it uses.

Bad input (a wrong path, a corrupt file, a bad recipe, an out-of-range number) ends
with one line on standard error (at most ``MAX_ERROR_LINE`` = 300 characters) and exit
status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import NamedTuple, Sequence

from ..errors import EdlError
from .common import UsageError, _Parser, error_line

__all__ = ["COMMANDS", "CommandInfo", "UsageError", "build_parser", "main"]


class CommandInfo(NamedTuple):
    """Where a command is declared and what it does, in one line.

    Attributes:
        module: the module under ``efficientdl.cli`` with ``add_NAME(parser)``.
        help: the line ``edl --help`` shows.
        group: the command has sub-commands (``add_NAME(parser, only)``).
    """

    module: str
    help: str
    group: bool = False


#: every ``edl`` command, in the order of ``edl --help``
COMMANDS: dict[str, CommandInfo] = {
    "train": CommandInfo("training", "train a registry model"),
    "distill": CommandInfo("training", "train a student on soft targets of one or several teachers (Hinton et al.)"),
    "sweep": CommandInfo("training", "hyper-parameter parallel: train a grid of configurations concurrently"),
    "dsd": CommandInfo("training", "Dense-Sparse-Dense training (Han et al. ICLR'17)"),
    "prune": CommandInfo("compression", "magnitude pruning with retraining"),
    "quantize": CommandInfo("compression", "weight sharing (k-means, trained centroids) or linear quantization "
                                           "(dynamic fixed point, int8 affine) of weights and activations"),
    "encode": CommandInfo("compression", "write the compressed file (Huffman + relative index)"),
    "compress": CommandInfo("compression", "the whole Deep Compression pipeline from a YAML recipe"),
    "demo": CommandInfo("compression", "compress LeNet-300-100 on Fashion-MNIST end to end (recipes/lenet300.yaml)"),
    "eval": CommandInfo("inspection", "accuracy of a compressed file or checkpoint"),
    "info": CommandInfo("inspection", "describe a compressed file"),
    "export": CommandInfo("export", "the decoded model as ONNX, safetensors (with the compressed form) "
                                    "or a torch.export archive, for other runtimes"),
    "compare": CommandInfo("compression", "every inference method on one trained model: file size, accuracy, "
                                          "MACs, batch-1 latency, Pareto plot"),
    "sensitivity": CommandInfo("compression", "per-layer pruning sensitivity (table + plot)"),
    "hw": CommandInfo("hardware", "hardware models: number formats, energy, roofline, EIE, systolic array, "
                                  "comparison", group=True),
    "recipe": CommandInfo("recipes", "recipes: check one before running it", group=True),
    "bits": CommandInfo("compression", "how many bits do we need: accuracy vs bits (table + plot)"),
}

_ALL = object()   # build every command / sub-command


def _parser(command: object = _ALL, subcommand: object = _ALL) -> argparse.ArgumentParser:
    """The ``edl`` parser with every command named, and the options of ``command`` only (or of all)."""
    from .. import __version__

    parser = _Parser(prog="edl", description="Make deep networks small, fast and energy-efficient.")
    parser.add_argument("--version", action="version", version=f"efficientdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, info in COMMANDS.items():
        p = sub.add_parser(name, help=info.help)
        if command is _ALL or command == name:
            add = getattr(import_module(f"{__package__}.{info.module}"), f"add_{name}")
            if info.group:
                add(p, None if subcommand is _ALL else subcommand)
            else:
                add(p)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole ``edl`` argument parser: every command with all its options (imports every command's choices)."""
    return _parser()


def _parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser ``argv`` needs: the command it names (and, for a group, the sub-command) built, the rest named.

    The top-level parser has no option taking a value, so the first word not starting
    with ``-`` is the command; a group's parser has none either, so the next word is the
    sub-command.  An unknown word builds nothing, and argparse reports it as before.
    """
    words = list(argv)
    for i, word in enumerate(words):
        if not word.startswith("-"):
            if word not in COMMANDS:
                return _parser(None)
            after = words[i + 1] if i + 1 < len(words) else ""
            return _parser(word, after)
    return _parser(None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edl``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser_for(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    command = " ".join(c for c in (args.command, getattr(args, "hw_command", None),
                                   getattr(args, "recipe_command", None)) if c)
    try:
        return args.func(args)
    except EdlError as e:
        if args.debug:
            raise
        print(error_line(f"edl {command}", str(e)), file=sys.stderr)  # always one short line
        return 2
    except OSError as e:        # the system refused a path (name too long, permission, …): the user's input
        if args.debug:
            raise
        reason, name = e.strerror or type(e).__name__, str(e.filename or "")
        name = name if len(name) <= 120 else f"{name[:80]}…{name[-39:]}"     # the reason must fit the line
        print(error_line(f"edl {command}", f"{name}: {reason}" if name else reason), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edl {command}: interrupted", file=sys.stderr)
        return 130
