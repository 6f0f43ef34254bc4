"""Every evaluation ranks rows by their logits: the sigmoid is monotone, but float64 rounds
every logit above 36.7 to probability 1.0 (float32 every one above 16.6), so rows a model
tells apart tied in AUC and group AUC. Logloss clips the probabilities to [1e-7, 1 − 1e-7]
as before, computed from the logits: 1 − p of a float64 p = sigmoid(15) lost 1e-10 of the
loss. Training's validation and ``ctr eval`` (CTRTask), a
distributed run's evaluation, the stages' validation score and ``ctr predict`` agree."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ctr.batch import Batch, JaggedFeatures
from ctr.datasets.progress import RowProgress
from ctr.embeddings.stages import Stage
from ctr.metrics import EPS
from ctr.recipe import recipe_from_dict
from ctr.train.distributed_epochs import evaluate
from ctr.train.placement import Placement
from ctr.train.predict import _metrics, _scores, _write
from ctr.train.stages import _run_procedure, split_auc
from ctr.train.task import CTRTask
from tests.embeddings.schemas import schema

# group 1: a negative at 40 below positives at 45 and 50 (all three 1.0 in float64); group 2:
# a positive at 60 above negatives at -20 and 15
LOGITS = [40.0, 45.0, 50.0, 60.0, -20.0, 15.0]
LABELS = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
GROUPS = [1, 1, 1, 2, 2, 2]
# the negative at 40 is clipped to 1 − EPS, the rows at ±45 or beyond too, the one at 15 is not
LOGLOSS = (-math.log(EPS) - 4 * math.log1p(-EPS) + 15 + math.log1p(math.exp(-15))) / 6


class FixedLogits(nn.Module):
    """A net whose logits [B] are its batch's one dense column (times ``scale``, 1)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.dense[:, 0] * self.scale, torch.zeros(())


class Loader(list):
    """``batches()`` with ``BatchLoader.batch_rows`` (rows of batch ``index`` over every rank: one here)."""

    def batch_rows(self, index: int) -> int:
        return self[index].size


def batches() -> list[Batch]:
    """The rows in two batches of three, with their groups."""
    dense, labels, groups = torch.tensor(LOGITS).unsqueeze(1), torch.tensor(LABELS), torch.tensor(GROUPS)
    no_ids = JaggedFeatures.from_dense([], torch.zeros((3, 0), dtype=torch.int64))
    return [Batch(dense[s : s + 3], no_ids, labels[s : s + 3], groups[s : s + 3]) for s in (0, 3)]


def validated() -> dict[str, float]:
    """The metrics of a validation as training (and ``ctr eval``) runs it."""
    task = CTRTask(recipe_from_dict({"model": {"name": "lr"}}), schema())
    task.net = FixedLogits()
    for index, batch in enumerate(batches()):
        task.validation_step(batch, index)
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer to log to
        task.on_validation_epoch_end()
    return task.last_metrics["valid"]


def predicted(tmp_path) -> dict[str, float]:
    """The metrics ``ctr predict`` prints, after it wrote the scores."""
    bar = RowProgress("scoring", bar=False, verb="scored")
    scored = _scores(FixedLogits().eval(), batches(), torch.device("cpu"), "32-true", bar)
    return _metrics(_write(scored, tmp_path / "scores.csv", True, None))


def distributed(tmp_path) -> dict[str, float]:
    """The metrics of a distributed run's evaluation, in a process group of one."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        place = Placement(rank=0, world_size=1, device=torch.device("cpu"))
        return evaluate(FixedLogits(), Loader(batches()), place, "valid")
    finally:
        dist.destroy_process_group()


EVALUATIONS = {"validation": lambda tmp_path: validated(), "distributed": distributed, "predict": predicted}


@pytest.mark.parametrize("evaluation", EVALUATIONS)
def test_metrics_rank_saturated_logits(evaluation, tmp_path):
    metrics = EVALUATIONS[evaluation](tmp_path)
    assert metrics["auc"] == 1.0 and metrics["gauc"] == 1.0
    assert metrics["logloss"] == pytest.approx(LOGLOSS, rel=0, abs=1e-13)


def test_one_process_and_a_distributed_run_give_the_same_metrics(tmp_path):
    assert validated() == distributed(tmp_path)


def test_the_stages_validation_score_ranks_saturated_logits():
    assert split_auc(FixedLogits(), batches(), "32-true") == 1.0


def test_predict_writes_probabilities(tmp_path):
    """The scores written for users stay click probabilities (float64), only the metrics rank logits."""
    import pandas as pd

    predicted(tmp_path)
    written = pd.read_csv(tmp_path / "scores.csv")
    assert written["score"].tolist() == torch.sigmoid(torch.tensor(LOGITS, dtype=torch.float64)).tolist()
    assert written["label"].tolist() == [int(y) for y in LABELS]


def test_a_distributed_evaluation_logs_the_rows_scored(tmp_path, monkeypatch, caplog):
    """Rank 0 logs the rows every rank scored every PROGRESS_LOG_SECONDS (here 0: each batch),
    as one process does without a bar (the distributed loop scored its splits in silence)."""
    import logging

    from ctr.datasets import progress

    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    distributed(tmp_path)
    assert [m.split(" (")[0] for m in caplog.messages if "rows scored" in m] == [
        "valid: scoring: 3 rows scored", "valid: scoring: 6 rows scored"]



class LinearLogits(nn.Module):
    """A net whose logits [B] are its batch's dense column through a Linear(1, 1) of weight 1
    (under bf16 autocast the matmul rounds 1.001 to 1.0), and whose embedding method's
    procedure keeps the score it is given."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        nn.init.ones_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.embedding = SimpleNamespace(run_procedure=lambda stage, context: self.scores.append(context.score()))
        self.scores = []

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(batch.dense)[:, 0], torch.zeros(())


@pytest.mark.parametrize(("precision", "expected"), [("32-true", 1.0), ("bf16-mixed", 0.5)])
def test_a_procedure_stage_scores_in_the_runs_precision(precision, expected):
    """A search stage's candidates were scored in fp32 while the run's validation (Lightning's
    autocast) computed in bf16: a negative at 1.0 and a positive at 1.001 tie in bf16."""
    no_ids = JaggedFeatures.from_dense([], torch.zeros((2, 0), dtype=torch.int64))
    batch = Batch(torch.tensor([[1.0], [1.001]]), no_ids, torch.tensor([0.0, 1.0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "32-true"):
        validated = LinearLogits()(batch)[0].float()
    assert (validated[1] > validated[0]).item() == (expected == 1.0)
    net, recipe = LinearLogits(), recipe_from_dict({"model": {"name": "lr"}, "trainer": {"precision": precision}})
    _run_procedure(SimpleNamespace(net=net), SimpleNamespace(loaders={"valid": [batch]}, recipe=recipe, progress=False),
                   Stage("search", kind="procedure"))
    assert net.scores == [expected]
