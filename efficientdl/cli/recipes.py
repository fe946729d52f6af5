"""``edl recipe …``: recipes, checked before they run."""

from __future__ import annotations

import argparse

from ..errors import EdlError
from .common import UsageError, _emit, _input_file, _load_model, add_common_options, add_subcommands, recipe_path


# --------------------------------------------------------------------------- edl recipe check
def add_recipe_check(p: argparse.ArgumentParser) -> None:
    """Options of ``edl recipe check``."""
    p.add_argument("recipe", help="YAML recipe, or the name of a shipped one")
    p.add_argument("--checkpoint", help="check layer names against this model instead of the recipe's registry model")
    add_common_options(p, data=False)
    p.set_defaults(func=cmd_recipe_check)


def cmd_recipe_check(args: argparse.Namespace) -> int:
    """``edl recipe check``: load and validate the recipe, then check its layer names against the model."""
    from .. import models
    from ..compress import load_recipe
    from ..compress.pipeline import check_against_model

    src = recipe_path(args.recipe)
    recipe = load_recipe(src)
    if args.checkpoint:                 # the recorded network, or the recipe's own code (MODULE:CALLABLE)
        from ..models.user import is_import_path

        spec = recipe.data["model"] if is_import_path(recipe.data["model"]) else None
        model = _load_model(_input_file(args.checkpoint),
                            argparse.Namespace(user_model=spec,
                                               model_kwargs=recipe.data.get("model_kwargs") if spec else None))
    else:
        try:
            model = models.build(recipe.data["model"], kwargs=recipe.data.get("model_kwargs"))
        except EdlError as e:
            raise UsageError(f"{recipe.where('model')}: {e}") from None
    check_against_model(recipe, model)
    stages = [s for s in ("dense", "prune", "quantize", "encode") if recipe.data.get(s) is not None]
    _emit(args, {"recipe": str(src), "valid": True, "model": recipe.data["model"], "stages": stages},
          f"{src}: valid recipe for {recipe.data['model']} (stages: {', '.join(stages)})")
    return 0


# --------------------------------------------------------------------------- the group
#: ``edl recipe`` sub-commands: name → (help, function adding its options and handler)
RECIPE_COMMANDS = {
    "check": ("validate a recipe (keys, ranges, layer names) without running anything", add_recipe_check),
}


def add_recipe(p: argparse.ArgumentParser, only: str | None = None) -> None:
    """The ``edl recipe`` group; ``only`` builds just that sub-command's options (see :func:`add_subcommands`)."""
    add_subcommands(p, "recipe_command", "RECIPE_COMMAND", RECIPE_COMMANDS, only)
