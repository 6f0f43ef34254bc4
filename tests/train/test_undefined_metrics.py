"""A monitored metric that is not finite at a validation (a gauc when no validation group
holds both labels): early stopping ends the run there and says so, on one process and in the
distributed loop's own rule alike."""

import json
import logging
import math

import pytest
import yaml

from ctr.cli import main
from ctr.recipe import EarlyStopConfig
from ctr.train.checkpoints import TrainState
from ctr.train.rundir import RunDir
from tests.conftest import tiny_recipe


def test_a_nan_gauc_ends_the_run_with_a_warning(tmp_path, caplog, capsys):
    (tmp_path / "train.csv").write_text("label,user,ad\n" + "".join(f"{i % 2},u{i % 5},a{i % 3}\n" for i in range(40)))
    (tmp_path / "valid.csv").write_text("label,user,ad\n" + "".join(f"{i % 2},u{i},a{i}\n" for i in range(6)))
    raw = tiny_recipe(tmp_path, train={"batch_size": 8, "epochs": 3, "early_stop": {"monitor": "valid/gauc"}})
    raw["data"] = {"dataset": "csv", "path": str(tmp_path / "train.csv"), "valid_path": str(tmp_path / "valid.csv"),
                   "group": "user", "cache_dir": raw["data"]["cache_dir"], "split": {"test": 0.25},
                   "features": [{"name": "user"}, {"name": "ad"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert "valid/gauc is nan: early stopping ends the run here" in caplog.text
    text = (tmp_path / "run" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert metrics["epochs"] == 1 and metrics["valid"]["gauc"] is None  # 1 epoch of 3; strict JSON
    assert math.isnan(RunDir(tmp_path / "run").read_metrics()["valid"]["gauc"])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--split", "valid"]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out, parse_constant=lambda name: pytest.fail(f"ctr eval printed {name}"))
    assert f"{tmp_path / 'run'}: best checkpoint scored on its valid split" in err
    assert printed["gauc"] is None


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_distributed_rule_stops_at_a_value_that_is_not_finite(mode):
    state, stop = TrainState(), EarlyStopConfig(monitor="valid/gauc" if mode == "max" else "valid/logloss", patience=5)
    state.update_patience(0.6, mode, stop)
    assert not state.stopped
    state.update_patience(float("nan"), mode, stop)
    assert state.stopped
