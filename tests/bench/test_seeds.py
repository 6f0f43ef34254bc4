"""benchmarks/seeds.py: a recipe's test metrics over seeds, as mean ± sd (finished runs reused)."""

import json

import yaml

from benchmarks.seeds import main


def finished(out, name, seed, auc, rate):
    """A finished run of recipe ``name`` and ``seed`` under ``out`` (its metrics.json alone)."""
    run = out / name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"auc": auc, "logloss": 0.5}, "train_samples_per_s": rate}))


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
