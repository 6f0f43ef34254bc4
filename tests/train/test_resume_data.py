"""A resumed run trains on the data it began with: an input file changed since is refused
before any data is encoded and anything in the run is written (it was trained on silently,
and the run's schema/ replaced by the new encoding's), and the same files named by the run's
absolute paths are not encoded again."""

import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from ctr.cli import main
from ctr.datasets import cache, preprocess
from ctr.errors import UserError
from ctr.recipe import recipe_from_dict
from ctr.train.rundir import RunDir
from ctr.train.runner import evaluate, train
from tests.conftest import tiny_recipe
from tests.datasets.test_shorthand_and_cache import csv_recipe, write_csv


def interrupted_run(tmp_path, raw):
    """A run of ``raw`` trained, then made unfinished (its metrics.json removed): resumable."""
    train(recipe_from_dict(raw), tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()
    return RunDir(tmp_path / "run")


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def encodings_counted(monkeypatch) -> list:
    """The encodings the data pipeline runs from now on (one entry each)."""
    encodings = []
    real_run = preprocess._Job.run
    monkeypatch.setattr(preprocess._Job, "run", lambda job, out: (encodings.append(out), real_run(job, out)))
    return encodings


@pytest.mark.parametrize("change, said", [
    (lambda text: text.replace(",1,", ",0,"), r"changed \(its modification time; if its content is as it was"),
    (lambda text: text + "9999,a1,1,b1,1.0\n", r"changed \(its size\)"),
], ids=["labels", "rows"])
def test_an_input_changed_since_the_run_began_is_refused_before_encoding_and_the_run_kept(
        tmp_path, monkeypatch, change, said):
    run = interrupted_run(tmp_path, csv_recipe(tmp_path, epochs=1))
    before = digest(run.root)
    rows = tmp_path / "rows.csv"
    rows.write_text(change(rows.read_text()))
    encodings = encodings_counted(monkeypatch)
    with pytest.raises(UserError, match=rf"^{run.root}: input {rows} {said}.* since the run began; a resumed run "
                                        r"trains on the data it began with"):
        train(run.load_recipe(), run.root, resume=True)
    assert digest(run.root) == before and encodings == []


def test_a_run_whose_schema_folder_is_gone_is_refused_before_encoding(tmp_path, monkeypatch):
    """Without schema/ (the input files' stamps, the encoding the checkpoint's rows follow) a
    resume checked nothing: it trained on input files changed since, and wrote their schema."""
    run = interrupted_run(tmp_path, csv_recipe(tmp_path, epochs=1))
    shutil.rmtree(run.schema)
    rows = tmp_path / "rows.csv"
    rows.write_text(rows.read_text() + "9999,a1,1,b1,1.0\n")
    encodings = encodings_counted(monkeypatch)
    with pytest.raises(UserError) as refused:
        train(run.load_recipe(), run.root, resume=True)
    assert str(refused.value) == (
        f"{run.root}: its schema/ is gone (the encoding and input files the run began with); a resumed run trains "
        "on the data it began with: restore it, or train a new run")
    assert not run.schema.exists() and encodings == []


def test_a_touched_input_resumes_once_the_said_command_gives_back_its_stamp(tmp_path):
    run = interrupted_run(tmp_path, csv_recipe(tmp_path, epochs=1))
    rows = tmp_path / "rows.csv"
    os.utime(rows, ns=(rows.stat().st_atime_ns, rows.stat().st_mtime_ns + 10**9))  # a copy without -p, say
    with pytest.raises(UserError) as refused:
        train(run.load_recipe(), run.root, resume=True)
    command = re.search(r"`(touch -d @\d+\.\d{9} \S+)`", str(refused.value)).group(1)
    subprocess.run(command.split(), check=True)
    assert train(run.load_recipe(), run.root, resume=True)["test"]["auc"] > 0


def test_a_run_saved_without_a_key_compares_its_schema_and_report(tmp_path):
    run = interrupted_run(tmp_path, csv_recipe(tmp_path, epochs=1))
    (run.schema / cache.KEY_FILE).unlink()  # a run of an earlier ctr
    rows = tmp_path / "rows.csv"
    rows.write_text(rows.read_text() + "9999,a1,1,b1,1.0\n")
    with pytest.raises(UserError, match=r"its data now encodes differently than when the run began "
                                        r"\(schema/(schema|report)\.json differs\)"):
        train(run.load_recipe(), run.root, resume=True)


def test_a_run_begun_with_a_relative_path_resumes_without_encoding_again(tmp_path, monkeypatch):
    raw = csv_recipe(tmp_path, epochs=1)
    raw["data"]["path"] = "rows.csv"
    monkeypatch.chdir(tmp_path)
    run = interrupted_run(tmp_path, raw)
    encodings = encodings_counted(monkeypatch)
    metrics = train(run.load_recipe(), run.root, resume=True)
    assert encodings == [] and metrics["test"]["auc"] > 0


def test_a_run_an_older_ctr_keyed_by_an_unread_split_key_resumes_on_the_rows_it_began_with(tmp_path, monkeypatch):
    """With both held-out files ``data.split`` splits nothing, and no longer keys the entry: the
    resume of a run whose key held it encodes again, the same rows, and goes on."""
    raw = csv_recipe(tmp_path, epochs=1)
    for split in ("valid", "test"):
        raw["data"][f"{split}_path"] = str(write_csv(tmp_path / f"{split}.csv", rows=100))
    raw["data"]["split"] = {"valid": 0.3, "test": 0.2, "seed": 7}
    run = interrupted_run(tmp_path, raw)
    root = next((tmp_path / "cache" / "data").iterdir())
    inputs = json.loads((root / cache.KEY_FILE).read_text())
    inputs["split"] = inputs["source"]["options"]["split"] = raw["data"]["split"]  # as an older ctr keyed it
    old = root.rename(root.with_name(f"csv-{cache.cache_key(inputs)[:16]}"))
    for key in (old / cache.KEY_FILE, run.schema / cache.KEY_FILE):
        key.write_text(cache.key_blob(inputs) + "\n")
    encodings = encodings_counted(monkeypatch)
    assert train(run.load_recipe(), run.root, resume=True)["test"]["auc"] > 0
    assert len(encodings) == 1
    shards = {split: digest(old / split) for split in ("train", "valid", "test", "vocab")}
    assert {split: digest(root / split) for split in shards} == shards


def test_a_run_an_older_ctr_keyed_by_a_spelling_now_normalised_resumes_and_is_scored_without_its_entry(
        tmp_path, monkeypatch):
    """``columns: auto`` keyed another entry than the header's columns left out: the resume of
    a run keyed so encodes again, the same rows, and goes on; its eval reads no entry."""
    raw = csv_recipe(tmp_path, epochs=1)
    run = interrupted_run(tmp_path, raw)
    root = next((tmp_path / "cache" / "data").iterdir())
    inputs = json.loads((root / cache.KEY_FILE).read_text())
    assert inputs["source"]["options"]["columns"] is None and raw["data"]["columns"] == "auto"
    inputs["source"]["options"]["columns"] = "auto"  # as an older ctr keyed it
    old = root.rename(root.with_name(f"csv-{cache.cache_key(inputs)[:16]}"))
    for key in (old / cache.KEY_FILE, run.schema / cache.KEY_FILE):
        key.write_text(cache.key_blob(inputs) + "\n")
    encodings = encodings_counted(monkeypatch)
    metrics = train(run.load_recipe(), run.root, resume=True)
    assert len(encodings) == 1 and {split: digest(root / split) for split in ("train", "valid", "test", "vocab")} == {
        split: digest(old / split) for split in ("train", "valid", "test", "vocab")}
    shutil.rmtree(tmp_path / "cache")
    assert evaluate(run.root)["auc"] == metrics["test"]["auc"] and len(encodings) == 1


def generator_4_run(tmp_path, monkeypatch, pairs):
    """An interrupted synthetic run begun under generator version 4 (its ``schema/key.json``
    names it), ``interacting_pairs: pairs``; this ctr's generator (5) draws from now on."""
    from ctr.datasets.synthetic import SyntheticDataset

    monkeypatch.setattr(SyntheticDataset, "generator_version", 4)
    run = interrupted_run(tmp_path, tiny_recipe(tmp_path, data={"interacting_pairs": pairs}))
    monkeypatch.undo()
    return run


REDRAWN = ("{run}: synthetic generator version 4 drew its rows, and this ctr's version 5 draws others for its recipe; "
           "a resumed run trains on the data it began with: train a new run")


def test_a_run_whose_generator_now_draws_other_rows_is_refused_before_encoding(tmp_path, monkeypatch):
    """Version 4 drew every label 0 with interacting_pairs: 0; the run resumed on version 5's
    labels (a new cache entry) without a word."""
    run = generator_4_run(tmp_path, monkeypatch, pairs=0)
    before = digest(run.root)
    encodings = encodings_counted(monkeypatch)
    with pytest.raises(UserError) as refused:
        train(run.load_recipe(), run.root, resume=True)
    assert str(refused.value) == REDRAWN.format(run=run.root)
    assert digest(run.root) == before and encodings == []


def test_a_distributed_run_whose_generator_now_draws_other_rows_is_refused_before_any_process(tmp_path, capsys):
    from tests.train.test_checkpoint_switch import saved_checkpoint

    run = tmp_path / "run"
    for name in ("last", "best"):
        saved_checkpoint(run / "checkpoints" / name)
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(tmp_path, data={"interacting_pairs": 0},
                                                                trainer={"devices": 2})))
    (run / "schema").mkdir()
    (run / "schema" / cache.KEY_FILE).write_text(json.dumps({"source": {"files": [], "generator": 4}}))
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip() == "ctr: error: " + REDRAWN.format(run=run)
    assert not (tmp_path / "cache").exists()


def test_a_run_whose_rows_the_new_generator_draws_alike_resumes(tmp_path, monkeypatch):
    """Version 5 changed only interacting_pairs: 0: a run of version 4 with pairs resumes."""
    run = generator_4_run(tmp_path, monkeypatch, pairs=12)
    assert train(run.load_recipe(), run.root, resume=True)["test"]["auc"] > 0


def test_a_run_of_another_pipeline_version_resumes_only_on_data_encoded_alike(tmp_path):
    """A run begun under an earlier pipeline version (its key's ``version``) trained on the new
    version's encoding without a word: a report that differs now (a row a bad row, say) is refused."""
    from ctr.datasets import prepare

    run = interrupted_run(tmp_path, csv_recipe(tmp_path, epochs=1))
    key = json.loads((run.schema / cache.KEY_FILE).read_text())
    (run.schema / cache.KEY_FILE).write_text(json.dumps({**key, "version": cache.PIPELINE_VERSION - 1}))
    now = prepare(run.load_recipe().data, progress=False).root
    run.check_resumed_encoding(now)  # encoded alike: resumed
    report = json.loads((run.schema / "report.json").read_text())
    report["splits"]["train"]["rows"] += 1
    (run.schema / "report.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match=rf"^{run.root}: its data now encodes differently than when the run began "
                                        r"\(schema/report\.json differs\)"):
        train(run.load_recipe(), run.root, resume=True)


def test_a_resume_and_an_eval_read_the_runs_saved_key_once(tmp_path, monkeypatch):
    """The checks of a resume and of an eval read schema/key.json once for the generator's
    version and once more for the input files' stamps."""
    from ctr.train.saved import _warn_if_changed

    raw = csv_recipe(tmp_path)
    prepared = preprocess.prepare(recipe_from_dict(raw).data, progress=False)
    run = RunDir(tmp_path / "run")
    run.schema.mkdir(parents=True)
    shutil.copy(prepared.root / cache.KEY_FILE, run.schema / cache.KEY_FILE)
    reads, read_text = [], preprocess.Path.read_text
    monkeypatch.setattr(preprocess.Path, "read_text", lambda path, *args, **kwargs: (
        reads.append(path.name), read_text(path, *args, **kwargs))[1])
    run.check_resumed_inputs(recipe_from_dict(raw).data)
    assert reads.count(cache.KEY_FILE) == 1
    _warn_if_changed(run, recipe_from_dict(raw).data, "test", 0)
    assert reads.count(cache.KEY_FILE) == 2
