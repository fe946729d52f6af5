"""Registries and declared options: one statement of what is accepted, read by every entry point."""

import argparse

import pytest

from efficientdl.core import Option, Registry, check_options
from efficientdl.errors import RecipeError


def test_registry_registers_looks_up_and_names_the_known_entries():
    reg = Registry("widget")

    @reg.register("a", help="first")
    def a():
        return 1

    reg.register("b", len)
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and "a" in reg and len(reg) == 2
    assert reg.get("a") is a and reg.entry("a").help == "first"
    with pytest.raises(RecipeError, match=r"^here: unknown widget 'c' \(expected one of a, b\)$"):
        reg.get("c", "here")
    reg.register("a", a)                        # the same object again is harmless
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", len)


@pytest.mark.parametrize("option, good, bad, message", [
    (Option("momentum", float, low=0, high=1, high_open=True), [0, 0.5, 0.999], [1, -0.1, "x", True, float("nan")],
     "expected a number in [0, 1)"),
    (Option("epochs", int, low=0, high=10), [0, 10], [11, 1.5, -1], "expected an integer in [0, 10]"),
    (Option("lr", float, low=0, low_open=True), [1e-9, 1e9], [0, -1, float("inf")], "expected a number > 0"),
    (Option("sparsity", float, low=0, high=1, per_layer=True), [0.5, {"fc1": 0.9}], [{"fc1": 2}, {}],
     None),
])
def test_option_ranges_by_hand(option, good, bad, message):
    for value in good:
        assert option.problem(value) is None and option.check(value) == value
    for value in bad:
        assert option.problem(value) is not None
        with pytest.raises(RecipeError, match=f"^where: {option.name}: "):
            option.check(value, "where")
    if message:
        assert message in option.problem(bad[0])


def test_option_parses_command_line_text_with_the_same_range():
    momentum = Option("momentum", float, low=0, high=1, high_open=True)
    assert momentum("0.9") == 0.9
    for text in ("1", "abc", "-0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number in \[0, 1\)"):
            momentum(text)
    parser = argparse.ArgumentParser()
    parser.add_argument("--momentum", type=momentum)
    assert parser.parse_args(["--momentum", "0.5"]).momentum == 0.5


def test_choices_say_unknown_and_list_the_known_ones():
    opt = Option("optimizer", str, "sgd", choices=("sgd", "adam"))
    with pytest.raises(RecipeError, match=r"^trainer: unknown optimizer 'adamw' \(expected one of sgd, adam\)$"):
        opt.check("adamw", "trainer")


def test_check_options_refuses_unknown_keys_and_fills_defaults():
    options = {"bits": Option("bits", int, 4, 1, 16), "init": Option("init", str, "linear", choices=("linear",))}
    assert check_options(options, {"bits": 8}) == {"bits": 8, "init": "linear"}
    with pytest.raises(RecipeError, match="unknown option 'bitz'"):
        check_options(options, {"bitz": 8})


def test_trainer_recipe_and_cli_share_one_range():
    """momentum 0.9995 was accepted by the Trainer and refused by recipes; now one bound decides."""
    from efficientdl.compress.recipe import validate
    from efficientdl.data import TensorLoader
    from efficientdl.train import Trainer
    from efficientdl.train.options import TRAIN_OPTIONS
    import torch

    loader = TensorLoader(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    for value, ok in ((0.99, True), (1.0, False)):
        recipe_ok = True
        try:
            validate({"model": "lenet300", "dense": {"momentum": value}})
        except RecipeError:
            recipe_ok = False
        trainer_ok = True
        try:
            Trainer(loader, momentum=value)
        except RecipeError:
            trainer_ok = False
        assert recipe_ok == trainer_ok == (TRAIN_OPTIONS["momentum"].problem(value) is None) == ok
