"""Pruning, weight sharing, Huffman coding and the file on every layer type users bring:
each type through the whole pipeline and back, checked against counts made here and
against the compressed model's own outputs."""

import pytest
import torch

from efficientdl import format as fmt
from efficientdl.compress.layers import compressible_tensors, tied_parameters
from efficientdl.compress.pruning.prune import prune_once, sensitivity
from efficientdl.compress.quantization.share import share
from efficientdl.compress.support import EXAMPLES, example
from efficientdl.errors import ModelError

WITH_WEIGHTS = [label for label in EXAMPLES if list(compressible_tensors(example(label)[0]))]


@pytest.mark.parametrize("label", WITH_WEIGHTS)
def test_every_layer_type_through_the_pipeline_and_back(label):
    model, x = example(label)
    names = [t.param_name for t in compressible_tensors(model)]
    prune_once(model, sparsity=0.7)
    share(model, bits=4)
    with torch.no_grad():
        expected = model(x)
    values = {t.param_name: t.value.detach().clone() for t in compressible_tensors(model)}
    for name, v in values.items():          # round(0.3 n) weights kept at most, ≤ 15 distinct non-zero values
        assert int((v != 0).sum()) <= round(0.3 * v.numel()), name
        assert torch.unique(v[v != 0]).numel() <= 15, name
    data, records = fmt.encode(model)
    kinds = {r.name: r.kind for r in records}
    assert all(kinds[n] in ("shared", "codes") for n in names), kinds
    fresh, _ = example(label, seed=1)       # another initialisation: everything must come from the file
    fmt.load(fmt.decode(data), model=fresh)
    for name, v in values.items():
        assert torch.equal(fresh.state_dict()[name], v), name
    with torch.no_grad():
        assert torch.allclose(fresh(x), expected, atol=1e-6)


def test_recurrent_gate_matrices_are_separate_tensors():
    model, _ = example("LSTM (2 layers, bidirectional)")
    keys = [t.key for t in compressible_tensors(model)]
    assert keys == [f"0.layer.weight_{kind}_l{layer}{suffix}" for layer in (0, 1) for suffix in ("", "_reverse")
                    for kind in ("ih", "hh")]
    pruned = prune_once(model, sparsity={"0.layer.weight_hh_l0": 0.9, "LSTM": 0.5})
    assert pruned["0.layer.weight_hh_l0"] == pytest.approx(0.9, abs=0.01)
    assert pruned["0.layer.weight_ih_l1"] == pytest.approx(0.5, abs=0.01)
    curves = sensitivity(model, lambda m: 0.5, sparsities=(0.0, 0.5))
    assert set(curves) == set(keys)


def test_tied_parameters_are_stored_once_and_stay_tied():
    model, x = example("tied parameters (embedding = output)")
    assert tied_parameters(model) == {"0.out.weight": "0.embed.weight"}
    prune_once(model, sparsity=0.8)
    share(model, bits=3)
    # both names compute the same pruned, weight-shared matrix
    assert torch.equal(model[0].out.weight, model[0].embed.weight)
    data, records = fmt.encode(model)
    by_name = {r.name: r for r in records}
    assert by_name["0.out.weight"].kind == "alias" and by_name["0.out.weight"].size_bytes == 0
    untied_bytes = len(fmt.encode(model, shared_layout="smaller")[0]) + by_name["0.embed.weight"].size_bytes
    assert len(data) < untied_bytes
    fresh, _ = example("tied parameters (embedding = output)", seed=3)
    fmt.load(fmt.decode(data), model=fresh)
    assert fresh[0].out.weight is fresh[0].embed.weight
    assert torch.equal(fresh(x), model(x))


def test_a_dangling_alias_is_refused():
    import json
    import zlib

    from efficientdl.errors import FormatError

    model, _ = example("tied parameters (embedding = output)")
    data = fmt.encode(model)[0]
    base = 16 + int.from_bytes(data[8:12], "little")
    header = json.loads(zlib.decompress(data[16:base]))
    next(r for r in header["tensors"] if r["kind"] == "alias")["of"] = "nowhere"
    raw = zlib.compress(json.dumps(header).encode())
    bad = data[:8] + len(raw).to_bytes(4, "little") + zlib.crc32(raw).to_bytes(4, "little") + raw + data[base:]
    with pytest.raises(FormatError, match="tied to 'nowhere'"):
        fmt.decode(bad)


def test_load_into_names_the_first_mismatching_parameter():
    model, _ = example("GRU")
    data = fmt.encode(model)[0]
    other = torch.nn.Sequential(__import__("efficientdl.compress.support", fromlist=["_Batched"])._Batched(
        torch.nn.GRU(8, 13)))
    with pytest.raises(ModelError, match="shape mismatch for '0.layer.weight_ih_l0'"):
        fmt.load(fmt.decode(data), model=other)


def test_readme_support_table_is_generated_from_the_code():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("support_table", root / "tools" / "support_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    readme = (root / "docs" / "support.md").read_text()
    assert tool.replace_table(readme, tool.render()) == readme, "run tools/support_table.py (docs/support.md)"


def test_settings_select_by_glob_regex_type_and_name():
    from efficientdl import models
    from efficientdl.compress.layers import check_spec_keys
    from efficientdl.errors import RecipeError

    model = models.create("lenet300")
    spec = {"fc3": 0.1, "re:fc[12]": 0.5, "fc*": 0.7, "Linear": 0.9}
    # exact name beats patterns; the first matching pattern beats later ones and the type
    assert prune_once(model, sparsity=spec) == pytest.approx({"fc1": 0.5, "fc2": 0.5, "fc3": 0.1}, abs=0.01)
    check_spec_keys({"f?3": 1, "re:.*": 2}, model, "sparsity")
    for bad, fragment in (({"conv*": 0.5}, "pattern 'conv*' matches no"), ({"re:fc[": 0.5}, "regular expression"),
                          ({"fc9": 0.5}, "'fc9' matches no")):
        with pytest.raises(RecipeError, match=__import__("re").escape(fragment)):
            check_spec_keys(bad, model, "sparsity")  # noqa


def test_recipe_patterns_are_checked_with_file_and_line(tmp_path):
    from efficientdl import models
    from efficientdl.compress import load_recipe
    from efficientdl.compress.pipeline import check_against_model
    from efficientdl.errors import RecipeError

    good = tmp_path / "good.yaml"
    good.write_text('model: lenet300\nprune:\n  sparsity: {"re:fc[12]": 0.9, "fc*": 0.7}\n')
    check_against_model(load_recipe(good), models.create("lenet300"))
    bad = tmp_path / "bad.yaml"
    bad.write_text('model: lenet300\nprune:\n  steps: 2\n  sparsity: {"conv*": 0.9}\n')
    with pytest.raises(RecipeError, match=r"bad.yaml:4: prune.sparsity: pattern 'conv\*' matches no"):
        check_against_model(load_recipe(bad), models.create("lenet300"))


def test_parametrized_layers_are_not_mistaken_for_ties():
    from efficientdl import models

    model = models.create("lenet300")
    prune_once(model, sparsity=0.5)
    share(model, bits=3)
    assert tied_parameters(model) == {}
    assert [t.key for t in compressible_tensors(model)] == ["fc1", "fc2", "fc3"]


def test_pruning_method_chosen_per_layer():
    from efficientdl import models
    from efficientdl.errors import RecipeError

    torch.manual_seed(0)
    model = models.create("lenet300")
    fc2 = model.fc2.weight.detach().clone()
    result = prune_once(model, sparsity={"fc1": 0.9}, quality={"fc2": 1.0})
    assert set(result) == {"fc1", "fc2"}                          # fc3 selected by neither: left dense
    assert result["fc1"] == pytest.approx(0.9, abs=1e-3)
    kept = fc2.abs() > fc2.std()                                  # the paper's rule, computed here
    assert torch.equal(model.fc2.weight != 0, kept)
    with pytest.raises(RecipeError, match="both 'sparsity' and 'quality' select 'fc1'"):
        prune_once(models.create("lenet300"), sparsity={"Linear": 0.5}, quality={"fc1": 1.0})


def test_recipe_with_both_methods_is_checked_per_layer(tmp_path):
    from efficientdl import models
    from efficientdl.compress import load_recipe
    from efficientdl.compress.pipeline import check_against_model
    from efficientdl.errors import RecipeError

    ok = tmp_path / "ok.yaml"
    ok.write_text("model: lenet300\nprune:\n  sparsity: {fc1: 0.9}\n  quality: {fc2: 1.0, fc3: 0.5}\n")
    check_against_model(load_recipe(ok), models.create("lenet300"))
    overlap = tmp_path / "overlap.yaml"
    overlap.write_text("model: lenet300\nprune:\n  sparsity: {Linear: 0.9}\n  quality: {fc2: 1.0}\n")
    with pytest.raises(RecipeError, match=r"overlap.yaml:4: .*both 'sparsity' and 'quality' select 'fc2'"):
        check_against_model(load_recipe(overlap), models.create("lenet300"))
    scalars = tmp_path / "scalars.yaml"
    scalars.write_text("model: lenet300\nprune:\n  sparsity: 0.9\n  quality: 1.0\n")
    with pytest.raises(RecipeError, match="exactly one"):
        load_recipe(scalars)


def test_load_from_a_user_constructor():
    from efficientdl.compress.support import TiedEmbedding

    model, x = example("custom module, own nn.Parameter")
    prune_once(model, sparsity=0.5)
    data = fmt.encode(model)[0]
    built = fmt.load(fmt.decode(data), model=lambda: example("custom module, own nn.Parameter", seed=9)[0])
    assert torch.equal(built(x), model(x))
    with pytest.raises(ModelError, match="returned int"):
        fmt.load(fmt.decode(data), model=lambda: 3)
    with pytest.raises(ModelError, match="shape mismatch|no counterpart"):
        fmt.load(fmt.decode(data), model=TiedEmbedding)


def test_info_counts_a_tied_tensor_once(tmp_path):
    model, _ = example("tied parameters (embedding = output)")
    model.append(torch.nn.BatchNorm1d(4))             # a buffer-carrying layer after the tie
    fmt.save(model, tmp_path / "t.edlz")
    floats = sum(t.numel() for t in {id(p): p for p in model.parameters()}.values()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    assert fmt.info(tmp_path / "t.edlz")["original_bytes"] == 4 * floats
