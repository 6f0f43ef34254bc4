"""``ctr train --resume`` refuses what it cannot honour, in one line, before any work: a
one-process run resumed in several processes (the distributed loop began it again from step
0 beside its Lightning checkpoints), an ``--out`` (ignored: the run trained into its own
directory), and, in the Python API, a recipe other than the run's own."""

import pytest
import yaml

from ctr.cli import main
from ctr.errors import UserError
from ctr.recipe import recipe_from_dict
from ctr.train.runner import train
from tests.conftest import tiny_recipe


def interrupted_one_process_run(tmp_path, checkpoint="checkpoints/last.ckpt"):
    """A run directory as a one-process run leaves it when killed: its recipe and a checkpoint."""
    run = tmp_path / "run"
    (run / checkpoint).parent.mkdir(parents=True)
    (run / checkpoint).write_bytes(b"")
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path)))
    return run


def test_a_one_process_run_is_not_resumed_in_two(tmp_path, capsys):
    run = interrupted_one_process_run(tmp_path)
    assert main(["train", "--resume", str(run), "-o", "trainer.devices=2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {run}: trained in one process (checkpoints/*.ckpt); it resumes in one process only: "
        f"give no -o trainer.devices / trainer.num_nodes, and set both to 1 in {run / 'recipe.yaml'}")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_one_process_run_whose_recipe_yaml_asks_for_two_is_told_so(tmp_path, capsys):
    """Its recipe.yaml's trainer.devices (a resume may edit the world size there) made it say
    "give no -o trainer.devices" to a command that gave none."""
    run = interrupted_one_process_run(tmp_path)
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, trainer={"devices": 2})))
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {run}: trained in one process (checkpoints/*.ckpt); it resumes in one process only: "
        f"give no -o trainer.devices / trainer.num_nodes, and set both to 1 in {run / 'recipe.yaml'}")


def test_a_stage_of_a_one_process_run_counts_too(tmp_path, capsys):
    run = interrupted_one_process_run(tmp_path, "stages/0-supernet/checkpoints/last.ckpt")
    assert main(["train", "--resume", str(run), "-o", "trainer.devices=2"]) == 2
    assert "trained in one process (checkpoints/*.ckpt)" in capsys.readouterr().err


def test_resume_with_an_out_is_refused(tmp_path, capsys):
    run = interrupted_one_process_run(tmp_path)
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: --resume continues the run in {run}; give no --out (copy the run directory first to keep "
        "the interrupted one)")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("overrides, named", [
    (["-o", "model.top_mlp=[32]"], "-o model.top_mlp"),
    (["-o", "trainer.devices=1", "-o", "train.epochs=3"], "-o train.epochs"),
])
def test_an_override_of_a_resume_is_refused_naming_its_key(tmp_path, capsys, overrides, named):
    """The refusal said only which keys may be given: not which of those given it refused."""
    run = interrupted_one_process_run(tmp_path)
    assert main(["train", "--resume", str(run), *overrides]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: --resume continues a run with its own recipe, and {named} would change it: give -o only for "
        "trainer.devices or trainer.num_nodes (a distributed run resumes on another world size), and train other "
        "settings as a new run")


def test_a_recipe_given_to_a_resume_is_refused_naming_it(tmp_path, capsys):
    run = interrupted_one_process_run(tmp_path)
    assert main(["train", "r.yaml", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: --resume continues a run with its own recipe (in {run}); give no recipe (r.yaml)")


def test_the_api_resumes_a_run_with_its_own_recipe_only(tmp_path):
    """``train(recipe, run, resume=True)`` with another model than the run began with is one
    line naming the difference, before any work (the checkpoint did not fit it, or fit a model
    the run's recipe.yaml does not describe); its world size may change, as on the command line."""
    run = interrupted_one_process_run(tmp_path)
    wider = recipe_from_dict(tiny_recipe(tmp_path, model={"bottom_mlp": [32]}))
    with pytest.raises(UserError) as refused:
        train(wider, run, resume=True)
    assert str(refused.value) == (
        f"{run}: begun with another recipe (model.bottom_mlp: [16] before, [32] now); a resume goes on with the "
        "run's own recipe.yaml (RunDir(run).load_recipe(), as ctr train --resume does)")
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "last.ckpt", "recipe.yaml"]


def test_a_recipe_edited_since_the_run_began_is_not_resumed(tmp_path, capsys):
    """An edited recipe.yaml was resumed without a word: its batch_size took effect (a
    mid-epoch checkpoint went on at other rows), its lr did not (the restored optimizer's)."""
    run = interrupted_one_process_run(tmp_path)
    (run / "schema").mkdir()
    (run / "schema" / "recipe.yaml").write_text((run / "recipe.yaml").read_text())
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["train"]["batch_size"] = 999
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {run / 'recipe.yaml'}: edited since the run began (train.batch_size: 512 before, 999 now); "
        "a resume trains the settings the run began with: undo the edit, or train the new settings as a new run")


def test_a_run_keeps_the_recipe_it_began_with_beside_its_schema(tmp_path):
    """What the check above compares with: written once, when the run begins."""
    from ctr.recipe.files import read_yaml
    from ctr.train.rundir import RunDir

    recipe = recipe_from_dict(tiny_recipe(tmp_path, train={"epochs": 1}))
    train(recipe, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert read_yaml(run.schema / "recipe.yaml") == read_yaml(run.recipe)
    assert run.edit_since_start() is None


@pytest.mark.parametrize("written", ["logs/metrics.csv", "stages/initial.pt"])
def test_a_run_stopped_before_its_first_checkpoint_names_both_kinds(tmp_path, capsys, written):
    """The refusal named checkpoints/last.ckpt only, which a distributed run never writes. A
    multi-stage run's stages/ before its first finished stage or checkpoint is nothing to
    resume either (it was taken for a started run)."""
    run = interrupted_one_process_run(tmp_path, written)
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {run}: nothing to resume (no checkpoint written yet: no checkpoints/last.ckpt, "
        "checkpoints/last (a distributed run's), stage checkpoint or finished stage in stages/)")


def test_a_distributed_checkpoint_lacking_a_file_is_refused_before_any_process(tmp_path, capsys):
    """The ranks began training again from step 0 over a checkpoints/last without DCP's .metadata."""
    run = tmp_path / "run"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "ctr.json").write_text("{}")
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, trainer={"devices": 2})))
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip().startswith(
        f"ctr: error: {run / 'checkpoints' / 'last'}: not a whole distributed checkpoint (no .metadata); ")
    assert not (tmp_path / "cache").exists()


def test_a_best_folder_lacking_a_file_is_refused_before_any_process(tmp_path, capsys):
    """The ranks trained a whole resume and failed loading checkpoints/best at its end."""
    from tests.train.test_checkpoint_switch import saved_checkpoint

    run = tmp_path / "run"
    for name in ("last", "best"):
        saved_checkpoint(run / "checkpoints" / name)
    (run / "checkpoints" / "best" / "optimizers.pt").unlink()
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, trainer={"devices": 2})))
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip().startswith(
        f"ctr: error: {run / 'checkpoints' / 'best'}: not a whole distributed checkpoint (no optimizers.pt); ")
    assert not (tmp_path / "cache").exists()


def test_a_one_process_run_whose_best_checkpoint_is_gone_is_refused_before_any_work(tmp_path):
    """The resume trained on and failed at its end, reading the best.ckpt its last.ckpt names
    ("no such checkpoint"); a run whose fit wrote no best.ckpt (its last is its best) resumes."""
    run = tmp_path / "run"
    train(recipe_from_dict(tiny_recipe(tmp_path, train={"epochs": 2})), run)
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "best.ckpt").unlink()
    kept = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(UserError) as refused:
        train(recipe_from_dict(tiny_recipe(tmp_path, train={"epochs": 2})), run, resume=True)
    assert str(refused.value) == (f"{run / 'checkpoints' / 'last.ckpt'}: names {run / 'checkpoints' / 'best.ckpt'} "
                                  "as its best checkpoint, which is gone; the resume ends by reading it: restore it, "
                                  "or train a new run")
    assert sorted(p.name for p in run.rglob("*")) == kept


@pytest.mark.parametrize("kept", [10, 0])
@pytest.mark.parametrize("name", ["ctr.json", "optimizers.pt", "random-1.pt"])
def test_a_distributed_checkpoint_file_cut_short_is_refused_before_any_process(tmp_path, capsys, name, kept):
    """A ctr.json cut short was a JSONDecodeError traceback; an optimizers.pt a RuntimeError
    traceback from each rank; a random-1.pt rank 1's, while rank 0 failed in gloo. An empty
    torch file is cut short too (not a file to save again with torch's zip format)."""
    from tests.train.test_checkpoint_switch import saved_checkpoint

    run = tmp_path / "run"
    for folder in ("last", "best"):
        saved_checkpoint(run / "checkpoints" / folder)
    broken = run / "checkpoints" / "last" / name
    broken.write_bytes(broken.read_bytes()[:kept])
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, trainer={"devices": 2})))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctr: error: {broken}: cut short or not ctr's ") and "\n" not in err
    assert "torch.save" not in err
    assert not (tmp_path / "cache").exists()


def test_a_one_process_run_whose_best_checkpoint_is_cut_short_is_refused_before_any_work(tmp_path):
    """The resume trained on to its end and failed there, reading a best.ckpt cut short that no
    later validation had replaced."""
    run = tmp_path / "run"
    train(recipe_from_dict(tiny_recipe(tmp_path)), run)
    (run / "metrics.json").unlink()
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:2000])
    kept = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(UserError) as refused:
        train(recipe_from_dict(tiny_recipe(tmp_path)), run, resume=True)
    assert str(refused.value).startswith(f"{best}: not a readable checkpoint (RuntimeError: ")
    assert str(refused.value).endswith("; the resume ends by reading it: restore it, or train a new run")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == kept
