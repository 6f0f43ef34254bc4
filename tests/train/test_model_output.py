"""A model's output is checked where it is used: float logits [B]. A plugin's [B, 1] or
[B, 2] ended in a Lightning traceback about target sizes, a ``squeeze()`` that leaves a
batch of one row a scalar crashed validation after a whole epoch, and ``ctr predict`` of
one row."""

import re

import pytest
import yaml

from ctr.cli import main
from ctr.recipe import recipe_from_dict
from tests.conftest import tiny_recipe
from tests.train.test_stages import DNIS

PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

from ctr.models.base import CTRModel
from ctr.recipe import ModelConfig
from ctr.registry import MODELS
from ctr.train.callbacks import FiniteLoss


@dataclass
class OddConfig(ModelConfig):
    name: str = "odd_output"
    output: str = "column"
    regularizer: str = "scalar"


@MODELS.register("odd_output", config=OddConfig)
class OddOutput(CTRModel):
    def __init__(self, schema, layout, config):
        super().__init__(schema, layout, config)
        if config.output == "refused_at_init":
            raise ValueError("output: refused_at_init is no output (a plugin's own check)")
        if config.output == "ctr_raises":
            FiniteLoss(every=0)  # a ValueError of ctr's own code: a bug, kept as its traceback
        if config.output != "no_parameters":
            self.linear = nn.Linear(len(layout.pooled) * layout.dim, 1)

    def forward(self, batch, embedded):
        if self.config.output == "refused_at_forward":
            raise ValueError(f"a batch of {batch.size} rows is refused")
        if self.config.output == "no_parameters":
            return embedded.pooled.sum((1, 2))
        logits = self.linear(embedded.pooled.flatten(1))  # [B, 1]
        if self.config.output == "branch_on_data":
            return logits.squeeze(-1) if logits.sum() > 0 else -logits.squeeze(-1)  # torch.export cannot trace it
        return {"row": logits.squeeze(-1), "column": logits, "pair": logits.expand(-1, 2),
                "doubled": torch.cat([logits, logits]).squeeze(-1), "int": logits.long().squeeze(-1),
                "scalar": logits.squeeze(), "constant": logits.squeeze(-1).detach()}[self.config.output]

    def regularizer(self, batch, embedded):
        square = embedded.pooled.pow(2).mean()
        return {"scalar": square, "vector": square.expand(3), "float": 0.5, "none": None,
                "zero": torch.zeros(())}[self.config.regularizer]
'''


def train_plugin_model(tmp_path, monkeypatch, output: str, regularizer: str = "scalar", embedding=None) -> int:
    """``ctr train`` of a tiny recipe over ``OddOutput`` with ``output`` and ``regularizer`` (and
    ``embedding``, when given); its exit code."""
    (tmp_path / "odd_output_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_recipe(tmp_path, plugins=["odd_output_plugin"], train={"max_steps": 2}, embedding=embedding or {})
    raw["model"] = {"name": "odd_output", "output": output, "regularizer": regularizer}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    return main(["train", str(recipe), "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("output, said", [
    ("refused_at_init", "OddOutput(schema, layout, config) raised ValueError: output: refused_at_init is no output "
                        "(a plugin's own check)"),
    ("refused_at_forward", "OddOutput.forward(batch, embedded) raised ValueError: a batch of 512 rows is refused"),
])
def test_a_plugin_model_s_value_error_is_one_line_naming_it(tmp_path, capsys, monkeypatch, output, said):
    """Its constructor's or forward's ValueError (a check of its own) was a Python traceback;
    ``CTR_DEBUG=1`` prints that traceback above the line."""
    assert train_plugin_model(tmp_path, monkeypatch, output) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ctr: error: model.name: odd_output: {said} (CTR_DEBUG=1 prints its traceback)", err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("CTR_DEBUG", "1")
    assert train_plugin_model(tmp_path, monkeypatch, output) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "odd_output_plugin.py" in err and err.strip().endswith(said + " (CTR_DEBUG=1 "
                                                                                          "prints its traceback)"), err


def test_a_multi_stage_run_refused_at_its_first_batch_leaves_no_run(tmp_path, capsys, monkeypatch):
    """DNIS wrote stages/ (the net before its first stage) before the model's first batch: the
    folder was kept as a started run, which its resume refused again and a new run could not
    train into ("already holds a run"). The same command now meets the same refusal."""
    for _ in range(2):
        assert train_plugin_model(tmp_path, monkeypatch, "refused_at_forward", embedding=DNIS) == 2
        assert "a batch of 512 rows is refused" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


def test_a_value_error_of_ctr_s_own_code_in_a_plugin_model_stays_a_traceback(tmp_path, monkeypatch):
    """What ctr's code raised is a bug of ctr's, not a plugin's check: its traceback."""
    with pytest.raises(ValueError, match="every must be >= 1"):
        train_plugin_model(tmp_path, monkeypatch, "ctr_raises")


@pytest.mark.parametrize("output, got", [
    ("column", r"torch\.float32 logits \[512, 1\] for 512 rows"),
    ("pair", r"torch\.float32 logits \[512, 2\] for 512 rows"),
    ("doubled", r"torch\.float32 logits \[1024\] for 512 rows"),
    ("int", r"torch\.int64 logits \[512\] for 512 rows"),
])
def test_a_model_returning_other_than_float_logits_b_is_one_line(tmp_path, capsys, monkeypatch, output, got):
    assert train_plugin_model(tmp_path, monkeypatch, output) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(
        r"^ctr: error: model\.name: OddOutput returned " + got + r"; a model returns float logits \[B\]", err), err
    assert not (tmp_path / "run").exists()  # refused at its first batch: the folder it made is removed


@pytest.mark.parametrize("regularizer, got", [
    ("vector", r"torch\.float32 \[3\]"), ("float", "a float"), ("none", "None"),
])
def test_a_regularizer_other_than_a_scalar_tensor_is_one_line(tmp_path, capsys, monkeypatch, regularizer, got):
    """A [3] term ended in autograd's "grad can be implicitly created only for scalar outputs",
    None in a TypeError traceback, and a float trained without a word (no gradient reaches it)."""
    assert train_plugin_model(tmp_path, monkeypatch, "row", regularizer) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(
        r"^ctr: error: model\.name: OddOutput\.regularizer\(\) returned " + got + r"; a regularizer returns a float "
        r"scalar tensor \[\]", err), err


def test_logits_that_no_parameter_shapes_are_one_line(tmp_path, capsys, monkeypatch):
    """A forward whose logits no parameter shapes (detached here; a constant, parameters unused) was
    torch's "element 0 of tensors does not require grad" traceback at the first step."""
    assert train_plugin_model(tmp_path, monkeypatch, "constant", "zero") == 2
    assert capsys.readouterr().err.strip() == (
        "ctr: error: model.name: OddOutput returned logits that no trainable parameter shapes (nor does a "
        "regularizer): train.optimizer has nothing to learn; use the model's parameters or the embeddings in forward")


def test_a_scalar_regularizer_trains(tmp_path, monkeypatch):
    assert train_plugin_model(tmp_path, monkeypatch, "row", "scalar") == 0


def test_a_scalar_for_one_row_is_refused_naming_the_squeeze(tmp_path, monkeypatch):
    import torch

    from ctr.datasets import prepare
    from ctr.datasets.loader import BatchLoader
    from ctr.errors import RecipeError
    from ctr.train.net import CTRNet

    (tmp_path / "odd_output_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_recipe(tmp_path, plugins=["odd_output_plugin"])
    raw["model"] = {"name": "odd_output", "output": "scalar"}
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    net = CTRNet(recipe, prepared.schema)
    batch = next(iter(BatchLoader(prepared.root / "train", prepared.schema, 1, prefetch=0)))
    with torch.no_grad(), pytest.raises(RecipeError, match=r"returned torch\.float32 logits \[\] for 1 row; .*squeeze\(-1\), not squeeze\(\)"):
        net(batch)


def test_a_model_without_parameters_is_one_line(tmp_path, capsys, monkeypatch):
    """An FM-like plugin whose only weights are the tables: torch's "optimizer got an empty
    parameter list" traceback."""
    assert train_plugin_model(tmp_path, monkeypatch, "no_parameters") == 2
    assert capsys.readouterr().err.strip() == (
        "ctr: error: train.optimizer: nothing to optimize: neither the model nor the embedding method holds a trainable"
        " parameter outside the tables (give the model one, e.g. a bias)")


def test_a_model_torch_export_cannot_trace_is_one_line_naming_its_line(tmp_path, capsys, monkeypatch):
    """A branch on the data: a 677-line dump of torch's tracer ended ``ctr export``."""
    assert train_plugin_model(tmp_path, monkeypatch, "branch_on_data") == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    line = PLUGIN.splitlines().index(next(x for x in PLUGIN.splitlines() if "cannot trace it" in x)) + 1
    assert err.count("\n") == 0 and re.match(  # the plugin's file: this test's, or an earlier test's import of it
        rf"^ctr: error: torch\.export cannot trace OddOutput over FullEmbedding at \S+odd_output_plugin\.py:{line}: ", err), err
    assert not (tmp_path / "model.pt2").exists()


def test_an_export_whose_batch_of_one_is_a_scalar_is_refused(tmp_path, capsys, monkeypatch):
    """A ``squeeze()`` traced at a batch of two: the program scored a batch of one row as a
    scalar [] (the docs promise [B] down to 1), while ``ctr predict`` of that row refuses it."""
    assert train_plugin_model(tmp_path, monkeypatch, "scalar") == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.match(
        r"^ctr: error: model\.name: OddOutput returned torch\.float32 logits \[\] for 1 row; .*not squeeze\(\)", err), err
    assert not list(tmp_path.glob("model.pt2*"))


NOT_A_MODEL = '''
from dataclasses import dataclass

from torch import nn

from ctr.recipe import ModelConfig
from ctr.registry import MODELS


@dataclass
class PlainConfig(ModelConfig):
    name: str = "plain_module"


@MODELS.register("plain_module", config=PlainConfig)
class PlainModule(nn.Module):
    def __init__(self, schema, layout, config):
        super().__init__()
        self.linear = nn.Linear(layout.dim, 1)
'''


def test_a_model_that_is_not_a_ctr_model_is_one_line(tmp_path, capsys, monkeypatch):
    """A plugin's plain ``nn.Module`` (or a factory's other object) was an AttributeError
    traceback where the trainer first used what CTRModel gives (``regularizer``, ``num_dense``)."""
    (tmp_path / "plain_plugin.py").write_text(NOT_A_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = tiny_recipe(tmp_path, plugins=["plain_plugin"], train={"max_steps": 2})
    raw["model"] = {"name": "plain_module"}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ctr: error: model.name: plain_module built a PlainModule, not a ctr.models.base.CTRModel "
                   "(subclass it: the trainer calls its forward(batch, embedded) and regularizer)"), err
