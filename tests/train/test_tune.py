"""``ctr tune``: the grid, the choice on validation only, seeds of the choice, reruns."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctr.errors import TrainingDiverged, UserError
from ctr.recipe import load_recipe
from ctr.train.grid import parse_grid
from ctr.train.tune import COLUMNS, Tuning
from tests.conftest import tiny_recipe


def test_grid_is_every_combination_and_lists_stay_whole():
    points = parse_grid(["model.dropout=0,0.2", "model.hidden=[8,8],[16]"])
    assert [p.overrides for p in points] == [
        ("model.dropout=0", "model.hidden=[8,8]"), ("model.dropout=0", "model.hidden=[16]"),
        ("model.dropout=0.2", "model.hidden=[8,8]"), ("model.dropout=0.2", "model.hidden=[16]"),
    ]
    for bad in (["model.dropout"], ["model.dropout=0,"], ["model.dropout=0", "model.dropout=1"]):
        with pytest.raises(UserError, match="--grid"):
            parse_grid(bad)


def test_commas_inside_quotes_do_not_split_a_grid_value():
    """``name="a,b",c`` is two values (it split into three, ``"a`` and ``b"`` among them)."""
    points = parse_grid(['name="a,b",c', "data.path='x,y.csv',z.csv"])
    assert [p.overrides for p in points] == [
        ('name="a,b"', "data.path='x,y.csv'"), ('name="a,b"', "data.path=z.csv"),
        ("name=c", "data.path='x,y.csv'"), ("name=c", "data.path=z.csv"),
    ]


def test_a_quote_inside_a_plain_value_does_not_hide_the_commas_after_it():
    """``name=it's,b`` was one point named ``it's,b``: the apostrophe opened a quote that never
    closed (YAML reads a quote as one only where a value, or an item of a flow value, begins)."""
    points = parse_grid(["name=it's,b", "data.cache_dir=/tmp/o'brien,/tmp/x", "model.top_mlp=[8, '4,5'],[2]"])
    assert [p.overrides for p in points][:2] == [
        ("name=it's", "data.cache_dir=/tmp/o'brien", "model.top_mlp=[8, '4,5']"),
        ("name=it's", "data.cache_dir=/tmp/o'brien", "model.top_mlp=[2]"),
    ]
    assert len(points) == 8


def test_a_quote_escaped_as_yaml_escapes_it_does_not_end_the_quoted_value():
    """``'it''s,b'`` (YAML's quote inside single quotes) split at its comma: the doubled quote
    closed the value and opened none; so did ``\\"`` inside double quotes."""
    points = parse_grid(["name='it''s,b',c", 'model.name="a\\"b,c",d'])
    assert [p.overrides for p in points] == [
        ("name='it''s,b'", 'model.name="a\\"b,c"'), ("name='it''s,b'", "model.name=d"),
        ("name=c", 'model.name="a\\"b,c"'), ("name=c", "model.name=d"),
    ]


class FakeTrainer:
    """Stands in for ``runner.train``: validation AUC rises with the embedding lr, test AUC
    falls with it, so a choice made on test data would pick the other end of the grid."""

    def __init__(self):
        self.calls = []

    def __call__(self, recipe, out, resume):
        lr = recipe.train.embedding_optimizer.lr
        self.calls.append((lr, recipe.seed))
        return {"valid": {"auc": 0.6 + lr, "logloss": 0.5 - lr}, "test": {"auc": 0.8 - lr + recipe.seed * 1e-3,
                                                                         "logloss": 0.5}}


class ScheduleTrainer(FakeTrainer):
    """Records each run's learning-rate schedule."""

    def __init__(self):
        super().__init__()
        self.schedules = []

    def __call__(self, recipe, out, resume):
        self.schedules.append(recipe.train.scheduler)
        return super().__call__(recipe, out, resume)


def test_a_point_without_a_decay_leaves_out_the_base_keys_only_a_decay_reads(tmp_path):
    """``--grid train.scheduler.decay=none,linear`` over a base warm-up with a linear decay was
    refused whole: its ``none`` point kept the base's decay_steps and min_lr, read by a decay
    only (the recipe refuses them there)."""
    schedule = {"name": "linear_warmup", "warmup_steps": 2, "decay": "linear", "decay_steps": 10, "min_lr": 0.001}
    trainer = ScheduleTrainer()
    grid = parse_grid(["train.scheduler.decay=none,linear"])
    Tuning(_recipe_file(tmp_path, train={"scheduler": schedule}), grid, 1, tmp_path / "t", [], trainer).run()
    assert [(s.decay, s.decay_steps, s.min_lr) for s in trainer.schedules] == [("none", None, 0.0),
                                                                               ("linear", 10, 0.001)]
    given = parse_grid(["train.scheduler.decay=none,linear", "train.scheduler.decay_steps=10,20"])
    with pytest.raises(UserError, match=r"train\.scheduler\.decay_steps: 10 is read by a decay only"):
        Tuning(_recipe_file(tmp_path, train={"scheduler": schedule}), given, 1, tmp_path / "u", [], trainer).run()


def _recipe_file(tmp_path, **sections):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, **sections)))
    return path


def test_chooses_on_validation_then_runs_seeds_of_the_choice_only(tmp_path):
    trainer, out = FakeTrainer(), tmp_path / "tune"
    grid = parse_grid(["train.embedding_optimizer.lr=0.01,0.1,0.05"])
    best = Tuning(_recipe_file(tmp_path, seed=7), grid, 3, out, [], trainer).run()
    assert best.overrides == ("train.embedding_optimizer.lr=0.1",)
    assert trainer.calls == [(0.01, 7), (0.1, 7), (0.05, 7), (0.1, 8), (0.1, 9)]
    assert load_recipe(out / "best.yaml").train.embedding_optimizer.lr == 0.1
    table = (out / "results.md").read_text()
    assert "| p01 (chosen) | train.embedding_optimizer.lr=0.1 | 0.7000 |" in table
    assert "| 0.7000 ± 0.0000 | 0.7080 ± 0.0010 |" in table  # valid, then test over seeds 7, 8, 9
    rerun = FakeTrainer()
    Tuning(_recipe_file(tmp_path, seed=7), grid, 3, out, [], rerun).run()
    assert rerun.calls == []


@pytest.mark.parametrize("axis", ["model.dropout.=0,1", ".seed=1,2", "data..rows=1,2", "=1,2", "seed=1,"])
def test_a_malformed_axis_is_one_error_naming_it_once(axis):
    """A stray dot was refused when a point was built, the item named twice
    (``--grid model.dropout.=1: override 'model.dropout.=1': ...``)."""
    with pytest.raises(UserError) as err:
        parse_grid([axis])
    assert str(err.value) == f"--grid {axis!r}: expected key.path=value1,value2,... (no empty key between dots)"


@pytest.mark.parametrize("axis, told", [
    ("data.path=a\udce9.csv,b.csv", "its values are not UTF-8 (byte 0xe9); give them"),
    ("caf\udce9=1,2", "its key is not UTF-8 (byte 0xe9); give it"),
])
def test_an_axis_that_is_not_utf8_is_one_error_naming_it_once(axis, told):
    """It was reported as an override, the item named twice in two escapings
    (``--grid data.path=a\udce9.csv: override 'data.path=a\xe9.csv': ...``)."""
    with pytest.raises(UserError) as err:
        parse_grid([axis])
    escaped = axis.replace("\udce9", "\\xe9")
    assert str(err.value) == f"--grid '{escaped}': {told} in UTF-8"


def test_a_value_given_twice_in_an_axis_is_refused():
    """It trained the same point twice (and a rerun without the copy was refused)."""
    for axis, value in (("train.batch_size=256,256", "256"), ("train.optimizer.lr=0.1,1e-1", "1e-1"),
                        ("model.hidden=[8,8],[8, 8]", "[8, 8]")):
        with pytest.raises(UserError, match=re.escape(f"value '{value}' given twice")):
            parse_grid([axis])
    assert len(parse_grid(["model.batch_norm=true,1"])) == 2  # a bool is not a number
    assert len(parse_grid(["model.flags=[true],[1]", "train.x={a: false},{a: 0}"])) == 4  # inside a list or mapping too
    with pytest.raises(UserError, match=re.escape("value '{a: [1e-1]}' given twice")):
        parse_grid(["train.x={a: [0.1]},{a: [1e-1]}"])



def test_an_axis_that_replaces_an_earlier_axis_is_refused():
    """``--grid model.top_mlp=[8],[4] --grid model={...}``: each point's model mapping replaced
    its top_mlp, so its two points trained one recipe, ranked as two settings."""
    parent = "model={name: dlrm, top_mlp: [16]}"
    with pytest.raises(UserError) as err:
        parse_grid(["model.top_mlp=[8],[4]", "train.batch_size=64", parent])
    assert str(err.value) == ("--grid model: replaces --grid model.top_mlp, an earlier axis, at every point (its "
                              "values would train nowhere); give that axis after it, or the value in one of them")
    inner = "model.top_mlp=[8],[4]"  # after the mapping, an axis sets a key inside it (one the mapping leaves out)
    assert len(parse_grid(["model={name: dlrm, bottom_mlp: [16]}", inner])) == 2


@pytest.mark.parametrize("axes, parent, value, inside", [
    (["model={name: dlrm, bottom_mlp: [4]},{name: dlrm, top_mlp: [8], bottom_mlp: [8]}", "model.top_mlp=[4],[2]"],
     "model", "{name: dlrm, top_mlp: [8], bottom_mlp: [8]}", "top_mlp"),
    (["train.early_stop={monitor: valid/logloss},null", "train.early_stop.patience=1,2"],
     "train.early_stop", "null", "patience"),
])
def test_a_mapping_axis_whose_value_a_later_axis_sets_inside_is_refused(axes, parent, value, inside):
    """``--grid model={name: dlrm, top_mlp: [8], bottom_mlp: [4]},{...} --grid model.top_mlp=[4],[2]``:
    the later axis replaced the mapping's top_mlp at every point, silently; a null value
    (``train.early_stop=null``: no early stopping) became a mapping of the later key (early
    stopping at every point)."""
    with pytest.raises(UserError) as err:
        parse_grid(axes)
    assert str(err.value) == (f"--grid {parent}: its value {value} has {inside} set by --grid {parent}.{inside} at "
                              "every point (that value would train nowhere); leave it out of one of them")


@pytest.mark.parametrize("axes, second, first", [
    (["model=null,{name: dlrm}"], "p01 (model={name: dlrm})", "p00 (model=null)"),
    (["train.embedding_optimizer={name: adagrad},{name: adagrad, lr: 0.05}"],
     "p01 (train.embedding_optimizer={name: adagrad, lr: 0.05})", "p00 (train.embedding_optimizer={name: adagrad})"),
    (["name=a,b"], "p01 (name=b)", "p00 (name=a)"),  # a run's name and folder (tune's own) change nothing it trains
    (["output.dir=x,y"], "p01 (output.dir=y)", "p00 (output.dir=x)"),
])
def test_points_that_train_one_recipe_are_refused_before_any_training(tmp_path, axes, second, first):
    """A value that is the default spelt out (or a run's name or folder alone) made two points
    of one recipe: it trained twice, ranked as two settings."""
    trainer = FakeTrainer()
    with pytest.raises(UserError) as err:
        Tuning(_recipe_file(tmp_path), parse_grid(axes), 1, tmp_path / "t", [], trainer).run()
    assert str(err.value) == f"--grid: {second} trains the recipe of {first} (a point would train twice)"
    assert trainer.calls == [] and not (tmp_path / "t").exists()


def test_a_rerun_with_fewer_seeds_reports_those_seeds_only(tmp_path):
    """results.md kept counting the earlier run's extra seed ("2 seeds") after --seeds 1."""
    out, grid = tmp_path / "tune", parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    Tuning(_recipe_file(tmp_path, seed=7), grid, 2, out, [], FakeTrainer()).run()
    assert "2 seeds (mean ± sample sd)" in (out / "results.md").read_text()
    Tuning(_recipe_file(tmp_path, seed=7), grid, 1, out, [], FakeTrainer()).run()
    table = (out / "results.md").read_text()
    assert "Chosen: `train.embedding_optimizer.lr=0.1`, 1 seed:" in table and "0.7070 " in table


class LossRisingTrainer(FakeTrainer):
    """Validation logloss rises with the embedding lr while AUC rises too: the lowest logloss
    and the highest AUC are at opposite ends of the grid."""

    def __call__(self, recipe, out, resume):
        metrics = super().__call__(recipe, out, resume)
        metrics["valid"]["logloss"] = 0.4 + recipe.train.embedding_optimizer.lr
        return metrics


def test_a_minimised_monitor_chooses_the_lowest(tmp_path):
    trainer = LossRisingTrainer()
    recipe = _recipe_file(tmp_path, train={"early_stop": {"monitor": "valid/logloss"}})  # its mode: min
    best = Tuning(recipe, parse_grid(["train.embedding_optimizer.lr=0.01,0.1"]), 1, tmp_path / "t", [], trainer).run()
    assert best.overrides == ("train.embedding_optimizer.lr=0.01",)  # the highest AUC is lr 0.1
    table = (tmp_path / "t" / "results.md").read_text()
    assert "| p00 (chosen) | train.embedding_optimizer.lr=0.01 | 0.4100 |" in table


def test_a_bad_point_is_refused_before_any_training(tmp_path):
    trainer = FakeTrainer()
    grid = parse_grid(["train.embedding_optimizer.lr=0.1,-1"])
    with pytest.raises(UserError, match=r"^--grid train\.embedding_optimizer\.lr=-1: train\.embedding_optimizer\.lr: must be > 0, got -1\.0$"):
        Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", [], trainer).run()
    assert trainer.calls == []
    recipe = _recipe_file(tmp_path)
    with pytest.raises(UserError, match=r"^\S+base.yaml \(with its -o\): model.x: unknown key"):  # not the grid's fault
        Tuning(recipe, parse_grid(["train.embedding_optimizer.lr=0.1"]), 1, tmp_path / "t", ["model.x=1"], trainer).run()


def test_points_whose_method_refuses_the_budget_are_listed_not_trained(tmp_path):
    """A method × budget grid pairs mgqe with a budget it cannot reach on the tiny schema:
    the other points train and are ranked; that one is named with its minimum."""
    trainer = FakeTrainer()
    recipe = _recipe_file(tmp_path, embedding={"method": "hash", "dim": 8})
    grid = parse_grid(["embedding.method=hash,mgqe", "embedding.budget=0.1,0.5"])
    best = Tuning(recipe, grid, 1, tmp_path / "t", [], trainer).run()
    assert len(trainer.calls) == 2 and best.overrides[0] == "embedding.method=hash"
    table = (tmp_path / "t" / "results.md").read_text()
    assert "- `embedding.method=mgqe embedding.budget=0.1`: cannot reach (min " in table
    everything_refused = parse_grid(["embedding.method=mgqe", "embedding.budget=0.1"])
    with pytest.raises(UserError, match=r"^--grid: no point can be trained"):
        Tuning(recipe, everything_refused, 1, tmp_path / "t2", [], trainer).run()


def test_the_base_recipes_backend_is_left_out_of_the_points_whose_method_does_its_own_lookups(tmp_path):
    """A grid over methods of a base recipe that sets ``embedding.backend`` was refused whole
    (compo refuses the key), though the backend is a kernel choice that changes no result:
    the points of such methods train without it, as ``ctr bench compression``'s cells do,
    and best.yaml is a recipe ``ctr train`` takes. A backend the grid itself gives such a
    method is still refused, naming the point."""
    backends = {}

    def trainer(recipe, out, resume):
        backends[recipe.embedding.method] = recipe.embedding.backend
        auc = 0.7 if recipe.embedding.method == "compo" else 0.6
        return {"valid": {"auc": auc, "logloss": 0.5}, "test": {"auc": auc, "logloss": 0.5}}

    recipe = _recipe_file(tmp_path, embedding={"method": "hash", "dim": 8, "budget": 0.5, "backend": "torch"})
    best = Tuning(recipe, parse_grid(["embedding.method=hash,compo"]), 1, tmp_path / "t", [], trainer).run()
    assert backends == {"hash": "torch", "compo": None} and best.overrides == ("embedding.method=compo",)
    assert load_recipe(tmp_path / "t" / "best.yaml").embedding.backend is None
    grid = parse_grid(["embedding.method=compo", "embedding.backend=torch,triton"])
    with pytest.raises(UserError, match=r"^--grid embedding\.method=compo embedding\.backend=torch: embedding\.backend: "
                                        r"method 'compo' does its own lookups"):
        Tuning(recipe, grid, 1, tmp_path / "t2", [], trainer).run()
    with pytest.raises(UserError, match=r"^\S+base\.yaml \(with its -o\): embedding\.backend: method 'compo'"):
        Tuning(recipe, parse_grid(["embedding.dim=4,8"]), 1, tmp_path / "t3", ["embedding.method=compo"], trainer).run()


def test_cli_tunes_a_tiny_recipe_end_to_end(tmp_path):
    recipe = _recipe_file(tmp_path)
    out = tmp_path / "tune"
    args = [recipe, "--grid", "train.embedding_optimizer.lr=0.001,0.2", "--seeds", "2", "--out", out]
    done = subprocess.run([sys.executable, "-m", "ctr.cli", "tune", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {r["point"] for r in rows[2:]} <= {"p00", "p01"}
    chosen = max(rows[:2], key=lambda r: float(r["valid"]))
    assert rows[2]["point"] == chosen["point"] and rows[2]["seed"] == str(int(chosen["seed"]) + 1)
    assert "chosen:" in done.stdout and (out / "best.yaml").exists()
    bad = subprocess.run([sys.executable, "-m", "ctr.cli", "tune", str(recipe), "--grid", "model.hiden=1,2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "model.hiden" in bad.stderr and "Traceback" not in bad.stderr


def test_a_rerun_with_other_settings_into_the_same_out_is_refused(tmp_path):
    """Rows were matched by point number and seed only: another grid (or base seed) into the
    same --out took the old runs' results for its own points, and best.yaml named settings
    that never trained."""
    out = tmp_path / "t"
    Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.01,0.1"]), 2, out, [], FakeTrainer()).run()
    for grid, overrides in ((["train.embedding_optimizer.lr=0.02,0.2"], []),
                            (["train.embedding_optimizer.lr=0.01,0.1"], ["seed=7"])):
        trainer = FakeTrainer()
        with pytest.raises(UserError, match=r"results.csv: holds runs of other settings \(p00 seed 42: "):
            Tuning(_recipe_file(tmp_path), parse_grid(grid), 2, out, overrides, trainer).run()
        assert trainer.calls == []


def test_a_row_of_an_earlier_ctr_is_judged_by_its_run_folders_recipe(tmp_path):
    """A ctr whose Recipe gained a key hashes every recipe otherwise: the rows an earlier ctr
    wrote were refused as other settings though their run folders hold the same settings."""
    from ctr.train.rundir import RunDir

    out, grid = tmp_path / "t", parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    Tuning(_recipe_file(tmp_path), grid, 1, out, [], FakeTrainer()).run()
    run = RunDir(out / "runs" / "p00-s0")  # what a real run leaves (FakeTrainer writes nothing)
    run.write_recipe(load_recipe(_recipe_file(tmp_path), ["train.embedding_optimizer.lr=0.01"]))
    run.metrics.write_text("{}")
    table = out / "results.csv"
    rows = list(csv.DictReader(table.open()))
    table.write_text(table.read_text().replace(rows[0]["recipe"], "0" * 16))  # p00's row, as an earlier ctr hashed it
    trainer = FakeTrainer()
    Tuning(_recipe_file(tmp_path), grid, 1, out, [], trainer).run()
    assert trainer.calls == []  # both rows kept: p00's folder holds the same settings
    shutil.rmtree(out / "runs" / "p00-s0")
    with pytest.raises(UserError, match=r"results.csv: holds runs of other settings \(p00 seed 42: "):
        Tuning(_recipe_file(tmp_path), grid, 1, out, [], trainer).run()


def test_a_row_whose_fingerprint_differs_is_kept_only_on_its_run_folders_recipe(tmp_path):
    """Such a row passed whenever its run folder held a run, left to the check of started
    runs: a row past this run's --seeds (not checked there) or a folder without its
    recipe.yaml (nothing to compare) passed with other settings."""
    from ctr.train.rundir import RunDir

    out, grid = tmp_path / "t", parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    Tuning(_recipe_file(tmp_path), grid, 2, out, [], FakeTrainer()).run()  # rows p00-s0, p01-s0, p01-s1
    table = out / "results.csv"
    row = next(r for r in csv.DictReader(table.open()) if r["point"] == "p01" and r["offset"] == "1")
    table.write_text(table.read_text().replace(row["recipe"], "0" * 16))
    run = RunDir(out / "runs" / "p01-s1")
    run.write_recipe(load_recipe(_recipe_file(tmp_path), ["train.embedding_optimizer.lr=0.05", "seed=43"]))
    run.metrics.write_text("{}")
    refused = r"results.csv: holds runs of other settings \(p01 seed 43: "
    with pytest.raises(UserError, match=refused):
        Tuning(_recipe_file(tmp_path), grid, 1, out, [], FakeTrainer()).run()
    run.write_recipe(load_recipe(_recipe_file(tmp_path), ["train.embedding_optimizer.lr=0.1", "seed=43"]))
    trainer = FakeTrainer()
    Tuning(_recipe_file(tmp_path), grid, 1, out, [], trainer).run()
    assert trainer.calls == []  # the same settings: kept
    run.recipe.unlink()
    with pytest.raises(UserError, match=refused):
        Tuning(_recipe_file(tmp_path), grid, 2, out, [], FakeTrainer()).run()


def test_a_run_interrupted_before_its_row_is_refused_under_other_settings_and_resumed_under_its_own(tmp_path):
    """A killed tune leaves a run folder and no row: a rerun with another -o resumed that run
    (trained with the old settings) and recorded its result under the new settings."""
    from dataclasses import replace

    from ctr.train.rundir import RunDir

    out, grid = tmp_path / "t", parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    interrupted = load_recipe(_recipe_file(tmp_path), ["train.embedding_optimizer.lr=0.01", "train.epochs=3"])
    run = RunDir(out / "runs" / "p00-s0")
    run.write_recipe(interrupted)
    run.last.parent.mkdir(parents=True)
    run.last.write_bytes(b"")  # killed after its first checkpoint: a rerun would resume it
    trainer = FakeTrainer()
    with pytest.raises(UserError, match=r"t: holds runs of other settings \(p00-s0: train.epochs: 3 before, 1 now\)"):
        Tuning(_recipe_file(tmp_path), grid, 1, out, [], trainer).run()
    assert trainer.calls == []
    Tuning(_recipe_file(tmp_path), grid, 1, out, ["train.epochs=3"], trainer).run()
    assert trainer.calls == [(0.01, 42), (0.1, 42)]


def test_a_run_of_a_recipe_whose_features_are_the_shorthand_has_the_same_settings(tmp_path):
    """Training keeps the resolved feature list; the point's recipe holds the shorthand: every
    rerun of such a tune (or bench) was refused as other settings."""
    from dataclasses import replace

    from ctr.datasets.source import resolve_features
    from ctr.recipe import recipe_from_dict
    from ctr.train.rundir import RunDir

    (tmp_path / "rows.csv").write_text("label,a,b,x\n1,u,v,0.5\n0,w,v,1.5\n")
    raw = {"data": {"dataset": "csv", "path": str(tmp_path / "rows.csv"), "label": "label",
                    "features": {"default_kind": "categorical", "specs": [{"name": "x", "kind": "numeric"}]}}}
    recipe = recipe_from_dict(raw)
    run = RunDir(tmp_path / "run")
    run.write_recipe(replace(recipe, data=resolve_features(recipe.data)))  # as training writes it
    assert run.settings_change(recipe) is None
    other = recipe_from_dict({**raw, "seed": 7})
    assert run.settings_change(other) == "seed: 42 before, 7 now"
    wide = recipe_from_dict({"data": {**raw["data"], "features": [{"name": f"column_{i}"} for i in range(20)]}})
    change = run.settings_change(wide)
    assert change.startswith("data.features: [{") and len(change) < 160  # long values cut


@pytest.mark.parametrize("axes", [["seed=1,5"], ["train.embedding_optimizer.lr=0.01,0.1", "seed=1"]])
def test_a_seed_axis_is_refused_pointing_at_seeds(axes):
    """``--grid seed=1,5`` ranked the seeds of one setting as settings (the luckiest seed
    won on noise), and the chosen point's ``--seeds`` repeats were other points' seeds."""
    with pytest.raises(UserError) as err:
        parse_grid(axes)
    assert str(err.value) == ("--grid seed: a seed is no setting to choose (the luckiest would win on noise); give "
                              "--seeds N (the chosen point's seeds from the recipe's on; -o seed=S sets that)")


class DivergingTrainer(FakeTrainer):
    """Diverges at an embedding lr of 1.0 or more."""

    def __call__(self, recipe, out, resume):
        if recipe.train.embedding_optimizer.lr >= 1.0:
            self.calls.append((recipe.train.embedding_optimizer.lr, recipe.seed))
            raise TrainingDiverged("training: the loss is not finite at step 3; stopped at step 3")
        return super().__call__(recipe, out, resume)


def test_a_point_that_diverges_is_listed_failed_and_the_grid_goes_on(tmp_path):
    """One learning rate too high stopped the whole tune, and every rerun stopped at it again."""
    out, trainer = tmp_path / "t", DivergingTrainer()
    grid = parse_grid(["train.embedding_optimizer.lr=0.05,5.0"])
    best = Tuning(_recipe_file(tmp_path), grid, 2, out, [], trainer).run()
    assert best.overrides == ("train.embedding_optimizer.lr=0.05",) and len(trainer.calls) == 3
    assert "| p01 | train.embedding_optimizer.lr=5.0 | failed: training: the loss is not finite" in (
        out / "results.md").read_text()
    rerun = DivergingTrainer()
    Tuning(_recipe_file(tmp_path), grid, 2, out, [], rerun).run()
    assert rerun.calls == []
    with pytest.raises(UserError, match=r"^--grid: every point failed"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=5.0"]), 1, tmp_path / "t2", [],
               DivergingTrainer()).run()


def test_an_out_holding_another_commands_results_is_refused(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "results.csv").write_text("method,budget,seed\nfull,,0\n")
    with pytest.raises(UserError, match=r"results.csv: not a results file of this command \(its columns: method, bud"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.1"]), 1, tmp_path / "t", [],
               FakeTrainer()).run()


@pytest.mark.parametrize("seed, offset, valid, said", [("1", "zero", "0.5", "offset: not an integer: 'zero'"),
                                                      ("1", "", "0.5", "offset: not an integer: ''"),
                                                      ("", "0", "0.5", "seed: not an integer: ''"),
                                                      ("1", "0", "", "valid: not a number: ''")])
def test_an_out_whose_results_were_damaged_is_refused_naming_the_line(tmp_path, seed, offset, valid, said):
    """A row whose offset is no integer (a hand edit, a cut copy) was a traceback of int(), an
    empty one too (a number column may be empty, but a row always has its seed and offset, and
    one that did not fail its validation value)."""
    from ctr.train.tune import COLUMNS

    (tmp_path / "t").mkdir()
    row = ["p00", "train.embedding_optimizer.lr=0.1", seed, offset, "f", "valid/auc", valid, "", "0.5", "", "0.6",
           "runs/p00-s0"]
    (tmp_path / "t" / "results.csv").write_text(",".join(COLUMNS) + "\n" + ",".join(row) + "\n")
    with pytest.raises(UserError, match=rf"results.csv:2: column {re.escape(said)} \(a damaged results"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.1"]), 1, tmp_path / "t", [],
               FakeTrainer()).run()


@pytest.mark.parametrize("command", [["tune", "RECIPE", "--grid", "train.embedding_optimizer.lr=0.1"],
                                     ["bench", "compression", "RECIPE", "--methods", "full"]])
def test_a_second_command_writing_results_into_the_same_out_is_refused(tmp_path, capsys, command):
    """Two tunes (or benchmarks) into one --out rewrote each other's results.csv from their
    own rows: the second is refused while the first runs."""
    from ctr.cli import main
    from ctr.train.rundir import held

    out, recipe = tmp_path / "out", str(_recipe_file(tmp_path))
    with held(out, "is writing results in this folder"):
        assert main([recipe if arg == "RECIPE" else arg for arg in command] + ["--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {out}: another ctr process is writing results in this folder"
    assert not (out / "results.csv").exists()


class UndefinedMetricTrainer(FakeTrainer):
    """A validation AUC that is nan (undefined: one label in the split) for an lr of 0.01."""

    def __call__(self, recipe, out, resume):
        metrics = super().__call__(recipe, out, resume)
        if recipe.train.embedding_optimizer.lr == 0.01:
            metrics["valid"]["auc"] = float("nan")
        return metrics


def test_a_point_whose_monitored_metric_is_nan_is_ranked_last_not_a_traceback(tmp_path):
    """A nan first in the grid ended ``ctr tune`` with a bare StopIteration (nan == nan is false),
    and a nan later sorted results.md at random."""
    grid = parse_grid(["train.embedding_optimizer.lr=0.01,0.05,0.1"])
    best = Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", [], UndefinedMetricTrainer()).run()
    assert best.overrides == ("train.embedding_optimizer.lr=0.1",)
    table = (tmp_path / "t" / "results.md").read_text()
    assert table.index("lr=0.1 |") < table.index("lr=0.05 |") < table.index("lr=0.01 |")
    with pytest.raises(UserError, match=r"^--grid: valid/auc is nan on every point"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.01"]), 1, tmp_path / "t2", [],
               UndefinedMetricTrainer()).run()


class DataRefusingTrainer(FakeTrainer):
    """Refuses, as training does once the data is prepared, the points whose setting does not fit it."""

    def __call__(self, recipe, out, resume):
        if recipe.train.embedding_optimizer.lr >= 0.1:
            raise UserError("train.eval_every_n_steps: 1000 is more than the 10 batches of an epoch")
        return super().__call__(recipe, out, resume)


def test_an_error_found_once_a_point_trains_names_the_point(tmp_path):
    """It said `ctr: error: train.eval_every_n_steps: ...` alone: which point (and seed) of the
    grid it was, the user had to find in the log above it."""
    grid = parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    with pytest.raises(UserError, match=r"^tune p01 \(train\.embedding_optimizer\.lr=0\.1\) seed 42: "
                                        r"train\.eval_every_n_steps: 1000 is more than"):
        Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", [], DataRefusingTrainer()).run()
    assert list(csv.DictReader((tmp_path / "t" / "results.csv").open()))[0]["point"] == "p00"  # the row before it stays


def test_a_point_refused_by_its_data_before_training_is_trained_with_its_fixed_setting_into_the_same_out(tmp_path):
    """A point stopped by what the prepared data refuses leaves a run folder of its recipe and
    schema only (nothing to resume, as `ctr train` reuses it); the rerun with the setting fixed
    was refused as "holds runs of other settings" until that folder was deleted by hand."""
    from ctr.train.rundir import RunDir

    out = tmp_path / "t"
    with pytest.raises(UserError, match="^tune p01"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.01,0.1"]), 1, out, [],
               DataRefusingTrainer()).run()
    RunDir(out / "runs" / "p01-s0").write_recipe(load_recipe(_recipe_file(tmp_path), ["train.embedding_optimizer.lr=0.1"]))
    trainer = FakeTrainer()
    Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.01,0.05"]), 1, out, [], trainer).run()
    assert trainer.calls == [(0.05, 42)]  # p00 finished earlier


def test_a_grid_value_that_is_not_yaml_is_read_as_text_as_an_override_is(tmp_path):
    """``--grid model.top_mlp=[8,16`` (a bracket left open) was a YAML traceback; ``-o`` reads
    such a value as text, and the point's recipe then names the key."""
    (point,) = parse_grid(["model.top_mlp=[8,16"])
    assert point.overrides == ("model.top_mlp=[8,16",)
    with pytest.raises(UserError, match=re.escape("value '@x' given twice")):  # @ begins no YAML value
        parse_grid(["name=@x,@x"])
    with pytest.raises(UserError, match=r"^--grid model\.top_mlp=\[8,16: model\.top_mlp: expected a list, got '\[8,16'"):
        Tuning(_recipe_file(tmp_path), [point], 1, tmp_path / "t", [], FakeTrainer()).run()


def test_an_out_that_is_a_file_is_refused_before_any_point(tmp_path):
    """It surfaced as the first point's error (`tune p00 (...) seed 42: afile/runs/p00-s0: afile is not a folder`)."""
    out = tmp_path / "afile"
    out.write_text("notes\n")
    trainer = FakeTrainer()
    with pytest.raises(UserError, match=rf"^{re.escape(str(out))}: exists and is not a folder; choose another --out$"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.embedding_optimizer.lr=0.01"]), 1, out, [], trainer).run()
    assert trainer.calls == []


def test_seeds_past_numpys_largest_are_refused_before_any_point(tmp_path):
    """``seed: 4294967294`` with ``--seeds 3``: stage 2's seed 4294967296 was a ValueError
    traceback from Lightning's seed_everything, after every point of stage 1 had trained."""
    trainer = FakeTrainer()
    with pytest.raises(UserError, match=r"^--seeds: 3 seeds from seed 4294967294 pass 4294967295, numpy's largest; "):
        Tuning(_recipe_file(tmp_path, seed=2**32 - 2), parse_grid(["train.embedding_optimizer.lr=0.01"]), 3,
               tmp_path / "t", [], trainer).run()
    assert trainer.calls == []


def test_a_recipe_of_several_processes_is_refused_not_trained_on_one(tmp_path):
    """A point trains in ctr tune's own process (``runner.train``), which trained ``trainer.devices:
    2`` on that one process, its run's recipe.yaml saying 2: refused before any point trains,
    and by ``runner.train`` itself (the Python API) before it writes anything."""
    from ctr.recipe import recipe_from_dict
    from ctr.train.runner import train

    refusal = r"trainer\.devices: 2 × num_nodes 1 processes, but this command trains in its one process \(ctr train " \
              r"starts a distributed run's\); set both to 1$"
    trainer = FakeTrainer()
    with pytest.raises(UserError, match=rf"^--grid trainer\.devices=2: {refusal}"):
        Tuning(_recipe_file(tmp_path), parse_grid(["trainer.devices=1,2"]), 1, tmp_path / "t", [], trainer).run()
    assert trainer.calls == []
    with pytest.raises(UserError, match=rf"^{refusal}"):
        train(recipe_from_dict(tiny_recipe(tmp_path, trainer={"devices": 2})), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_point_whose_fused_table_update_has_no_fused_form_is_refused_before_any_point_trains(tmp_path):
    """``train.embedding_optimizer.fused`` with an optimizer the kernels cannot apply in the
    backward (adam) is what ``ctr train`` refuses before any work: a grid point of it stopped
    ctr tune only when its turn came, after the points before it had trained."""
    trainer = FakeTrainer()
    fused = {"embedding_optimizer": {"name": "adagrad", "fused": True}}
    with pytest.raises(UserError, match=r"^--grid train\.embedding_optimizer\.name=adam: train\.embedding_optimizer\."
                                        r"fused: optimizer 'adam' has no fused form \(choose from "):
        Tuning(_recipe_file(tmp_path, train=fused), parse_grid(["train.embedding_optimizer.name=adagrad,adam"]), 1,
               tmp_path / "t", [], trainer).run()
    assert trainer.calls == []


def test_the_user_guide_names_every_column_of_results_csv():
    """docs/training.md's description of ``OUT/results.csv`` names each of its columns."""
    guide = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    start = guide.index("It writes `OUT/results.csv`")
    described = guide[start:guide.index("`OUT/results.md`", start)]
    assert [column for column in COLUMNS if f"`{column}`" not in described] == []


def test_a_grid_key_below_a_value_names_the_point(tmp_path):
    """An axis that sets a key below a value of the recipe (``seed.x``) is refused naming the
    point, as every other error of its settings is (it said only 'seed: is not a section')."""
    with pytest.raises(UserError, match=r"^--grid seed\.x=1: seed: is not a section, cannot set seed\.x$"):
        Tuning(_recipe_file(tmp_path, seed=7), parse_grid(["seed.x=1,2"]), 1, tmp_path / "t", [], FakeTrainer()).run()
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("override, axis", [("train.embedding_optimizer.lr=0.5", "train.embedding_optimizer.lr"),
                                            ("train.early_stop.patience=5", "train.early_stop")])
def test_an_override_that_a_grid_axis_replaces_is_refused(tmp_path, override, axis):
    """``-o`` of the key an axis sets (or of one below it) trained every point without it, silently."""
    grid = parse_grid(["train.embedding_optimizer.lr=0.01,0.1", "train.early_stop=null,{monitor: valid/auc}"])
    key = override.partition("=")[0]
    with pytest.raises(UserError, match=rf"^-o {re.escape(key)}: --grid {re.escape(axis)} sets it at every point"):
        Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", [override], FakeTrainer()).run()
    assert not (tmp_path / "t").exists()
    trainer = FakeTrainer()
    Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", ["train.embedding_optimizer={name: sgd}"], trainer).run()
    assert len(trainer.calls) == 4  # an -o above an axis is not replaced: the axis sets a key inside it


@pytest.mark.parametrize("override, axis, inside", [
    ("train.embedding_optimizer={name: sgd, lr: 0.5}", "train.embedding_optimizer.lr", "lr"),
    ("train={embedding_optimizer: {lr: 0.5}}", "train.embedding_optimizer.lr", "embedding_optimizer.lr"),
    ("train.early_stop=null", "train.early_stop.patience", "patience"),
])
def test_a_mapping_override_holding_a_key_a_grid_axis_sets_is_refused(tmp_path, override, axis, inside):
    """``-o train.embedding_optimizer={name: sgd, lr: 0.5}`` with ``--grid
    train.embedding_optimizer.lr=...`` trained sgd at the grid's rates: the -o's lr was
    replaced at every point, silently, as an -o of the key itself is refused for; ``-o
    train.early_stop=null`` (no early stopping) became a mapping of the grid's key (early
    stopping at every point)."""
    trainer = FakeTrainer()
    with pytest.raises(UserError) as err:
        Tuning(_recipe_file(tmp_path), parse_grid([f"{axis}=1,2"]), 1, tmp_path / "t", [override], trainer).run()
    assert str(err.value) == (f"-o {override.partition('=')[0]}: its {inside} is set by --grid {axis} at every point "
                              "(the -o value would be ignored); give it in one of them")
    assert trainer.calls == []


def test_an_override_without_a_value_is_malformed_not_a_null_holding_a_grid_key(tmp_path):
    """``-o train.early_stop`` (no ``=``) was refused as a null whose patience the grid sets."""
    with pytest.raises(UserError, match=r"^override 'train\.early_stop': expected key\.path=value$"):
        Tuning(_recipe_file(tmp_path), parse_grid(["train.early_stop.patience=1,2"]), 1, tmp_path / "t",
               ["train.early_stop"], FakeTrainer()).run()


class SeedDivergingTrainer(FakeTrainer):
    """Diverges on seed 43 only."""

    def __call__(self, recipe, out, resume):
        if recipe.seed == 43:
            raise TrainingDiverged("training: the loss is not finite at step 3; stopped at step 3")
        return super().__call__(recipe, out, resume)


def test_a_seed_of_the_chosen_point_that_diverges_is_named_beside_its_mean(tmp_path):
    """The chosen point's table gave the mean of the seeds that trained as if no other was
    asked: a diverged seed was in no line of results.md."""
    out = tmp_path / "t"
    Tuning(_recipe_file(tmp_path, seed=42), parse_grid(["train.embedding_optimizer.lr=0.01,0.05"]), 3, out, [],
           SeedDivergingTrainer()).run()
    table = (out / "results.md").read_text()
    assert "Chosen: `train.embedding_optimizer.lr=0.05`, 2 of 3 seeds (mean ± sample sd; seed 43 failed: training: " \
           "the loss is not finite at step 3; stopped at step 3):" in table


@pytest.mark.parametrize("axis, key", [
    ("data.split.seed=1,2", "data.split.seed"), ("data.split={valid: 0.2},{valid: 0.3}", "data.split"),
    ("data.rows=4000,5000", "data.rows"), ("data.seed=1,2", "data.seed"),
    ("data={dataset: synthetic, rows: 4000},{dataset: synthetic, rows: 5000}", "data"),
])
def test_a_grid_axis_that_changes_the_validation_rows_is_refused_naming_it(tmp_path, axis, key):
    """Each value of such an axis was validated on other rows, and the points were ranked
    together (``data.split.seed=1,2``: the choice went to the easier split)."""
    trainer = FakeTrainer()
    with pytest.raises(UserError) as err:
        Tuning(_recipe_file(tmp_path), parse_grid([axis, "train.embedding_optimizer.lr=0.01,0.1"]), 1,
               tmp_path / "t", [], trainer).run()
    assert str(err.value) == (f"--grid {key}: changes the validation data (its points would be ranked on different "
                              "validation rows or labels); a grid's data keys are features, cache_dir, prefetch, "
                              "shuffle_buffer, on_device, integer_ids here (run ctr tune once per setting of the others)")
    assert trainer.calls == [] and not (tmp_path / "t").exists()


def test_a_data_axis_that_leaves_the_validation_rows_alone_is_tuned(tmp_path):
    """Settings of how rows are encoded or fed (not which rows are validated) rank together."""
    trainer = FakeTrainer()
    grid = parse_grid(["data.shuffle_buffer=100,1000", "train.embedding_optimizer.lr=0.01,0.1"])
    best = Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "t", [], trainer).run()
    assert best.overrides == ("data.shuffle_buffer=100", "train.embedding_optimizer.lr=0.1") and len(trainer.calls) == 4


def test_with_bad_rows_skipped_a_features_axis_is_refused_and_integer_ids_tuned(tmp_path):
    """With ``on_bad_rows: skip`` the features decide which rows are dropped, so each point
    would be validated on other rows; synthetic's ``integer_ids`` only encodes the same rows."""
    trainer = FakeTrainer()
    skipping = _recipe_file(tmp_path, data={"on_bad_rows": "skip"})
    with pytest.raises(UserError, match=r"^--grid data.features: .* data keys are cache_dir, prefetch, shuffle_buffer, "
                                        r"on_device, integer_ids here .*; with data.on_bad_rows: skip, the keys that "
                                        r"decide which rows are bad are not\)$"):
        Tuning(skipping, parse_grid(["data.features={skip: [C1]},{skip: [C2]}"]), 1, tmp_path / "t", [], trainer).run()
    grid = parse_grid(["data.integer_ids=false,true"])
    Tuning(_recipe_file(tmp_path), grid, 1, tmp_path / "u", [], trainer).run()
    assert len(trainer.calls) == 2


@pytest.mark.parametrize("argv, said", [
    (["tune", "--grid", "model.dropout=0,0.2", "--seeds", "0"], "--seeds: must be >= 1, got 0"),
    (["bench", "compression", "--seeds", "0"], "--seeds: must be >= 1, got 0"),
    (["bench", "compression", "--jobs", "0"], "--jobs: must be >= 1, got 0"),
])
def test_a_count_flag_below_one_is_named_with_its_value(tmp_path, capsys, argv, said):
    """`--seeds 0` said `--seeds must be >= 1` (no value), unlike `ctr bench train --steps 0`'s
    `--steps: must be >= 1, got 0`."""
    from ctr.cli import main

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    assert main([*argv[:-2], str(tmp_path / "r.yaml"), *argv[-2:], "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {said}"


REDRAWN = ("tune p00 seed 42 (train.embedding_optimizer.lr=0.01): synthetic generator version 4 drew its rows, and "
           "this ctr's version 5 draws others for its recipe: its run is moved to {} and trained again")


@pytest.mark.parametrize("pairs, redone", [(0, True), (12, False)])
def test_a_finished_run_whose_generator_now_draws_other_rows_is_trained_again(tmp_path, caplog, pairs, redone):
    """A point's run on the rows synthetic generator 4 drew with ``interacting_pairs: 0``
    (every label 0; this ctr draws others) was reported as today's result, which ``ctr train
    --resume`` of it refuses; with pairs, version 4 drew today's rows and the run is kept."""
    import json
    import logging

    from ctr.datasets.cache import KEY_FILE
    from ctr.train.rundir import RunDir

    out, grid = tmp_path / "t", parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    base = _recipe_file(tmp_path, data={"interacting_pairs": pairs})
    Tuning(base, grid, 1, out, [], FakeTrainer()).run()
    run = RunDir(out / "runs" / "p00-s0")  # what a real run of generator 4 leaves (FakeTrainer writes nothing)
    run.write_recipe(load_recipe(base, ["train.embedding_optimizer.lr=0.01"]))
    run.metrics.write_text("{}")
    run.schema.mkdir()
    (run.schema / KEY_FILE).write_text(json.dumps({"source": {"files": [], "generator": 4}}))
    trainer = FakeTrainer()
    caplog.set_level(logging.INFO, logger="ctr.tune")
    Tuning(base, grid, 1, out, [], trainer).run()
    assert trainer.calls == ([(0.01, 42)] if redone else [])
    kept = out / "stale-runs" / "p00-s0"
    assert [m for m in caplog.messages if "generator version" in m] == ([REDRAWN.format(kept)] if redone else [])
    assert run.root.exists() != redone and kept.exists() == redone
    assert not redone or (kept / "metrics.json").read_text() == "{}"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["point"] for r in rows) == ["p00", "p01"]


def test_a_run_on_input_files_changed_since_is_refused_not_ranked_with_the_new(tmp_path):
    """A point finished on a CSV file that was edited before the rerun kept its row: its
    validation value, of the old rows, was ranked with points trained on the new ones (and an
    interrupted point stopped at ``restore it, or train a new run``, which a tune cannot)."""
    import json

    from ctr.datasets.cache import KEY_FILE, source_fingerprint
    from ctr.train.rundir import RunDir

    rows = tmp_path / "rows.csv"
    rows.write_text("label,a\n1,u\n0,w\n")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**tiny_recipe(tmp_path), "data": {"dataset": "csv", "path": str(rows),
                                                                      "label": "label"}}))
    out, grid = tmp_path / "t", parse_grid(["train.embedding_optimizer.lr=0.01,0.1"])
    Tuning(base, grid, 1, out, [], FakeTrainer()).run()
    recipe = load_recipe(base, ["train.embedding_optimizer.lr=0.01"])
    run = RunDir(out / "runs" / "p00-s0")  # what a real run leaves (FakeTrainer writes nothing)
    run.write_recipe(recipe)
    run.metrics.write_text("{}")
    run.schema.mkdir()
    (run.schema / KEY_FILE).write_text(json.dumps({"source": source_fingerprint(recipe.data)}))
    trainer = FakeTrainer()
    Tuning(base, grid, 1, out, [], trainer).run()
    assert trainer.calls == []  # the same input: kept
    rows.write_text("label,a\n1,u\n0,w\n1,w\n")
    with pytest.raises(UserError) as err:
        Tuning(base, grid, 1, out, [], trainer).run()
    assert str(err.value) == (f"{out}: p00-s0 trained on other data (input {rows} changed (its size)); its result "
                              "would be compared with runs on the data as it is now: restore it, or choose another --out")
    assert trainer.calls == []


@pytest.mark.parametrize("name", ["best.yaml", "results.md", "results.csv"])
def test_an_out_whose_files_would_overwrite_the_recipe_is_refused_before_any_point(tmp_path, name):
    """``ctr tune best.yaml --out .`` wrote the chosen point's recipe over the recipe file
    being tuned (a results file named as the recipe took the table)."""
    recipe = tmp_path / name
    text = yaml.safe_dump(tiny_recipe(tmp_path))
    recipe.write_text(text)
    trainer = FakeTrainer()
    message = f"^--out {tmp_path}: the tuning would write over its recipe {recipe}; choose another --out$"
    with pytest.raises(UserError, match=message):
        Tuning(recipe, parse_grid(["train.embedding_optimizer.lr=0.01,0.1"]), 1, tmp_path, [], trainer).run()
    assert recipe.read_text() == text and trainer.calls == [] and not (tmp_path / "runs").exists()


def test_an_out_inside_a_file_is_one_line_naming_the_file(tmp_path, capsys):
    """Its lock beside the folder was tried first: 'cannot be written (file exists)', naming
    neither --out nor the file in the way."""
    from ctr.cli import main

    recipe = _recipe_file(tmp_path)
    out = recipe / "sub"
    assert main(["tune", str(recipe), "--grid", "train.embedding_optimizer.lr=0.1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {out}: {recipe} is not a folder; choose another --out"


@pytest.mark.parametrize("argv, said", [
    (["--grid", "train.optimizer.lr=-1,0.1"], "--grid train.optimizer.lr=-1: train.optimizer.lr: must be > 0"),
    (["--grid", "train.optimizer.lr=0.1", "--seeds", "0"], "--seeds: must be >= 1, got 0"),
])
def test_a_refused_recipe_or_flag_makes_no_folder_for_out(tmp_path, capsys, argv, said):
    """The lock beside --out made its parent before the recipe was read: a bad point left a new,
    empty folder."""
    from ctr.cli import main

    out = tmp_path / "new" / "out"
    assert main(["tune", str(_recipe_file(tmp_path)), *argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"ctr: error: {said}")
    assert not (tmp_path / "new").exists()


def test_a_methods_os_error_while_its_budget_is_asked_is_the_one_line_it_was(tmp_path, capsys, monkeypatch):
    """A plugin method's disk full (or missing file) while ``ctr tune`` asked its budget was one
    line naming the file, exit 2, until budget_refusal wrapped it in MethodFailed: a chained
    traceback, exit 1."""
    import dataclasses

    from ctr.cli import main
    from ctr.registry import EMBEDDINGS

    def full_disk(schema, config):
        raise OSError(28, "No space left on device", str(tmp_path / "codes.bin"))

    monkeypatch.setitem(EMBEDDINGS._entries, "hash", dataclasses.replace(EMBEDDINGS.get("hash"), target=full_disk))
    recipe = _recipe_file(tmp_path, embedding={"method": "hash", "dim": 8, "budget": 0.5})
    args = [str(recipe), "--grid", "train.embedding_optimizer.lr=0.1,0.2", "--out", str(tmp_path / "t")]
    assert main(["tune", *args]) == 2
    assert capsys.readouterr().err.strip().endswith(f"ctr: error: {tmp_path / 'codes.bin'}: no space left on device")
