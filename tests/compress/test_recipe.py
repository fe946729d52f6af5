"""Tests of recipe validation: shipped recipes are valid, and every problem names FILE:LINE."""

from pathlib import Path

import pytest

from efficientdl import models
from efficientdl.compress.layers import check_spec_keys
from efficientdl.compress.recipe import load_recipe, validate
from efficientdl.errors import RecipeError

RECIPES = sorted((Path(__file__).resolve().parents[2] / "efficientdl" / "recipes").glob("*.yaml"))  # package data


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {"lenet300.yaml", "lenet5.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates_and_fits_its_model(path):
    recipe = load_recipe(path)
    assert recipe.path == str(path)
    model = models.create(recipe.data["model"])
    for stage, key in (("prune", "sparsity"), ("prune", "quality"), ("quantize", "bits"), ("encode", "index_bits")):
        check_spec_keys((recipe.data.get(stage) or {}).get(key), model, f"{stage}.{key}")
    # the line map points at the keys as written in the file (block or flow style)
    lines = path.read_text().splitlines()
    for keys, line in recipe.lines.items():
        text = lines[line - 1]
        assert text.lstrip().startswith(f"{keys[-1]}:") or f"{{{keys[-1]}:" in text or f" {keys[-1]}:" in text, (keys, line)


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def expect_error(path, line=None, *fragments):
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:" if line is None else f"{path}:{line}:"), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_unknown_key_top_level(tmp_path):
    path = write(tmp_path, "model: lenet300\ndata: digits\nseeed: 3\n")
    expect_error(path, 3, "unknown key 'seeed'", "seed")


def test_unknown_key_nested(tmp_path):
    path = write(tmp_path, "# a comment\nmodel: lenet300\n\ndense:\n  epochs: 3\n  lrr: 0.1\n")
    expect_error(path, 6, "dense.lrr")


@pytest.mark.parametrize("text,line,fragment", [
    ("model: lenet300\ndense:\n  epochs: -1\n", 3, "dense.epochs"),
    ("model: lenet300\ndense:\n  epochs: 2\n  lr: 0\n", 4, "dense.lr"),
    ("model: lenet300\ndense:\n  epochs: 2.5\n", 3, "integer"),
    ("model: lenet300\ndense:\n  schedule: warmup\n", 3, "cosine"),
    ("model: lenet300\ndense:\n  warmup_epochs: -1\n", 3, "dense.warmup_epochs"),
    ("model: lenet300\nquantize:\n  bits: 4\n  optimizer: adamw\n", 4, "quantize.optimizer"),
    ("model: lenet300\nprune:\n  sparsity: 0.5\n  clip_grad_norm: 0\n", 4, "prune.clip_grad_norm"),
    ("model: lenet300\nprune:\n  steps: 2\n  sparsity: 1.5\n", 4, "prune.sparsity"),
    ("model: lenet300\nprune:\n  steps: 2\n  sparsity: {fc1: 0.9, fc2: 1.5}\n", 4, "'fc2'"),
    ("model: lenet300\nprune:\n  sparsity: 0.9\n  steps: 0\n", 4, "prune.steps"),
    ("model: lenet300\nprune:\n  sparsity: 0.9\n  distill: 'yes'\n", 4, "prune.distill"),
    ("model: lenet300\nquantize:\n\n  bits: 0\n", 4, "quantize.bits"),
    ("model: lenet300\nquantize:\n  bits: {Linear: 4.5}\n", 3, "'Linear'"),
    ("model: lenet300\nquantize:\n  bits: 4\n  init: kmeans++\n", 4, "quantize.init"),
    ("model: lenet300\nencode:\n  index_bits: 9\n", 3, "encode.index_bits"),
    ("model: lenet300\nencode:\n  coding: zip\n", 3, "encode.coding"),
    ("model: lenet300\nbatch_size: 0\n", 2, "batch_size"),
    ("model: 5\n", 1, "model"),
    ("model: lenet300\ndense: 3\n", 2, "must be a mapping"),
])
def test_bad_values_name_file_and_line(tmp_path, text, line, fragment):
    expect_error(write(tmp_path, text), line, fragment)


@pytest.mark.parametrize("text,line", [
    ("model: lenet300\n\tdense: 1\n", 2),                       # a tab
    ("model: lenet300\ndata: digits\nseed: 0\nbad: a: b\n", 4),  # a second colon
    ("model: lenet300\ndense:\n  epochs: 3\n lr: 0.1\n", 4),     # broken indentation
])
def test_bad_yaml_names_file_and_line(tmp_path, text, line):
    expect_error(write(tmp_path, text), line, "not valid YAML")


def test_missing_model(tmp_path):
    expect_error(write(tmp_path, "data: digits\ndense:\n  epochs: 1\n", "nomodel.yaml"), None, "model")


def test_sparsity_and_quality_together(tmp_path):
    path = write(tmp_path, "model: lenet300\ndata: digits\nprune:\n  sparsity: 0.9\n  quality: 1.0\n")
    expect_error(path, 3, "exactly one")


def test_neither_sparsity_nor_quality(tmp_path):
    expect_error(write(tmp_path, "model: lenet300\nprune:\n  steps: 3\n"), 2, "exactly one")


def test_quantize_without_bits(tmp_path):
    expect_error(write(tmp_path, "model: lenet300\nquantize:\n  epochs: 1\n"), 2, "bits")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- model: lenet300\n", "just a string\n"])
def test_not_a_mapping(tmp_path, text):
    expect_error(write(tmp_path, text), None, "mapping")


def test_unreadable_paths(tmp_path):
    expect_error(tmp_path / "missing.yaml", None, "no such recipe file")
    with pytest.raises(RecipeError, match="is not a file"):
        load_recipe(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\xfa model")
    expect_error(binary, None, "cannot read")


def test_valid_recipe_and_empty_stage(tmp_path):
    path = write(tmp_path, "model: lenet300\ndense:\nprune:\n  sparsity: {fc1: 0.9, default: 0.5}\n")
    recipe = load_recipe(path)
    assert recipe.data["dense"] == {}
    assert recipe.section("prune") == {"sparsity": {"fc1": 0.9, "default": 0.5}}
    assert recipe.section("quantize") is None
    assert recipe.lines[("prune", "sparsity")] == 4
    assert recipe.where("prune", "sparsity") == f"{path}:4"


def test_validate_dict_without_file():
    assert validate({"model": "lenet5", "quantize": {"bits": 4}}).path is None
    with pytest.raises(RecipeError, match="^recipe: unknown key 'dense.foo'"):
        validate({"model": "lenet5", "dense": {"foo": 1}})
    with pytest.raises(RecipeError):
        validate(["model"])


def test_every_training_key_of_a_stage_reaches_the_trainer():
    import inspect

    from efficientdl.compress.pipeline import TRAINER_KEYS
    from efficientdl.compress.recipe import SCHEMA
    from efficientdl.train import Trainer

    trainer_args = set(inspect.signature(Trainer).parameters)
    assert set(TRAINER_KEYS) <= trainer_args
    for stage in ("dense", "prune", "quantize"):
        training_keys = set(SCHEMA[stage]) & trainer_args
        assert training_keys == set(TRAINER_KEYS), stage
