"""The shipped recipes are package data: found through importlib.resources (so an installed wheel has
them), by a bare name on the command line, and through the checkout's ``recipes/`` link."""

import json
from pathlib import Path

import pytest

from efficientdl.cli import common
from efficientdl.cli.main import main
from efficientdl.errors import RecipeError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare name must not depend on the working directory


def test_packaged_recipes_live_in_the_package():
    assert {"lenet300", "lenet5", "lstm", "squeezenet"} <= set(common.packaged_recipes())
    path = common.packaged_recipe("lenet300")
    assert path.is_file() and path.parent.resolve() == (ROOT / "efficientdl" / "recipes").resolve()
    assert (ROOT / "recipes" / "lenet300.yaml").resolve() == path.resolve()   # the checkout's link


def test_pyproject_ships_the_recipes_as_package_data():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "recipes/*.yaml" in config["tool"]["setuptools"]["package-data"]["efficientdl"]


def test_recipe_check_takes_a_bare_packaged_name(capsys):
    assert main(["recipe", "check", "lenet300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["recipe"]).resolve() == common.packaged_recipe("lenet300").resolve()


def test_compress_takes_a_bare_packaged_name(monkeypatch, capsys):
    from efficientdl import compress

    seen = []

    def stop(path):            # the pipeline itself is tested elsewhere: stop once the recipe is found
        seen.append(Path(path))
        raise RecipeError("stopped by the test")

    monkeypatch.setattr(compress, "load_recipe", stop)
    assert main(["compress", "lenet300"]) == 2
    assert seen and seen[0].resolve() == common.packaged_recipe("lenet300").resolve()
    assert capsys.readouterr().err.strip() == "edl compress: error: stopped by the test"


def test_a_file_of_that_name_wins_over_the_packaged_recipe(tmp_path):
    (tmp_path / "lenet300").write_text("model: lenet300\n")
    assert common.recipe_path("lenet300") == Path("lenet300")


def test_unknown_bare_name_is_one_line(capsys):
    assert main(["compress", "no-such-recipe"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["edl compress: error: no-such-recipe: no such file"]


def test_demo_runs_the_packaged_recipe(monkeypatch):
    from efficientdl.cli import compression

    seen = []
    monkeypatch.setattr(compression, "cmd_compress", lambda args, recipe, out: seen.append((recipe, out)) or 0)
    assert main(["demo"]) == 0
    assert seen[0][0] == common.packaged_recipe("lenet300") and seen[0][1] == Path("runs/demo")
