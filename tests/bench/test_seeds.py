"""benchmarks/seeds.py: a recipe's test metrics over seeds, as mean ± sd (finished runs reused)."""

import json

import pytest
import yaml

from benchmarks.seeds import main


def finished(out, name, seed, auc, rate, **more):
    """A finished run of recipe ``name`` and ``seed`` under ``out`` (its metrics.json alone),
    its test metrics ``more`` too (``gauc=0.6``)."""
    run = out / name / f"seed{seed}"
    run.mkdir(parents=True)
    test = {"auc": auc, **more, "logloss": 0.5}
    (run / "metrics.json").write_text(json.dumps({"test": test, "train_samples_per_s": rate}))


def test_one_seed_is_shown_without_a_spread(tmp_path, capsys):
    """The spread of one seed is undefined: it printed "± 0.0000", as if seeds had agreed; ctr
    tune and ctr bench compression show the value alone."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "one", "data": {"dataset": "synthetic"}}))
    finished(tmp_path / "out", "one", 1, 0.75, 1000.0)
    finished(tmp_path / "out", "one", 2, 0.77, 3000.0)
    assert main([str(tmp_path / "r.yaml"), "--seeds", "1", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| one | 1 | 0.7500 | 0.5000 | 1000 |"
    assert main([str(tmp_path / "r.yaml"), "--seeds", "1", "2", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| one | 2 | 0.7600 ± 0.0141 | 0.5000 ± 0.0000 | 2000 ± 1414 |"


@pytest.mark.parametrize("order", [("grouped", "plain"), ("plain", "grouped")])
def test_a_metric_a_recipe_lacks_is_a_dash(tmp_path, capsys, order):
    """A recipe without groups has no test gauc: beside a recipe that has it, its cell read
    "nan" for one seed and, over seeds, statistics.stdev's AttributeError traceback ended the
    table; ctr tune's tables show "–"."""
    for name in ("grouped", "plain"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "data": {"dataset": "synthetic"}}))
    for seed in (1, 2):
        finished(tmp_path / "out", "grouped", seed, 0.75, 1000.0, gauc=0.6)
        finished(tmp_path / "out", "plain", seed, 0.75, 1000.0)
    recipes = [str(tmp_path / f"{name}.yaml") for name in order]  # the first recipe's metrics named the columns
    assert main([*recipes, "--seeds", "1", "2", "--out", str(tmp_path / "out")]) == 0
    plain = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| plain |"))
    assert plain == "| plain | 2 | 0.7500 ± 0.0000 | – | 0.5000 ± 0.0000 | 1000 ± 0 |"
