"""``train.eval_every_n_steps`` that does not divide an epoch's batches: the run's last steps,
after its last validation by the interval, are validated at the end of training (the best
checkpoint was chosen without them), in one process as in several."""

import csv
import json

import pytest
import yaml

from ctr.cli import main
from tests.conftest import tiny_recipe


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_the_steps_after_the_last_interval_are_validated_at_the_end(tmp_path, capfd, devices):
    raw = tiny_recipe(tmp_path, train={"epochs": 2, "eval_every_n_steps": 4},
                      trainer={"devices": devices, "progress_bar": False})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0, capfd.readouterr().err
    steps = json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"]
    per_epoch = steps // 2
    assert per_epoch % 4, per_epoch  # the interval leaves a tail in each epoch
    with (tmp_path / "run" / "logs" / "metrics.csv").open(newline="") as file:
        validated = [int(row["step"]) + 1 for row in csv.DictReader(file) if row.get("valid/auc")]
    by_interval = [epoch * per_epoch + n for epoch in range(2) for n in range(4, per_epoch + 1, 4)]
    assert validated == [*by_interval, steps]  # an earlier epoch's tail is validated in the next one
