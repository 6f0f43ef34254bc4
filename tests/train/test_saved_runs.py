"""A run directory is self-contained: ``ctr eval`` and ``ctr predict`` read its saved schema
and vocabularies (nothing re-fitted), from any working directory, on new files too."""

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ctr.cli import main
from ctr.metrics import auc
from tests.conftest import run_ctr

pytestmark = pytest.mark.slow  # end-to-end runs


ctr = run_ctr


def write_rows(path, rows, seed, tokens=20):
    """CSV rows with a learnable label: two categoricals, one numeric, a user (group)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, tokens, rows), rng.integers(0, tokens, rows)
    x = rng.normal(size=rows)
    logit = np.sin(a) + np.cos(b) + x
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"label": label, "user": rng.integers(0, 50, rows), "a": [f"a{v}" for v in a],
                          "b": [f"b{v}" for v in b], "x": x.round(4)})
    frame.to_csv(path, index=False)
    return frame


RECIPE = {
    "name": "csvrun",
    "data": {"dataset": "csv", "path": "data/train.csv", "valid_path": "data/valid.csv", "test_path": "data/test.csv",
             "label": "label", "group": "user", "cache_dir": "cache",
             "features": [{"name": "a"}, {"name": "b"}, {"name": "x", "kind": "numeric", "transform": "standardize"}]},
    "model": {"name": "dlrm", "bottom_mlp": [8], "top_mlp": [8]},
    "embedding": {"method": "full", "dim": 4},
    "train": {"batch_size": 256, "eval_batch_size": 512, "epochs": 1},
    "trainer": {"progress_bar": False, "num_threads": 1},  # one thread: no oversubscription warning on a busy machine
}


# OptEmbed with a small search: its final model is stored in the shared pruned format
OPTEMBED = {"method": "optembed", "dim": 4, "budget": 0.5, "threshold_reg": 0.003,
            "arch_optimizer": {"name": "adam", "lr": 0.01}, "stages": {"supernet": {"epochs": 2}},
            "population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1}


def trained_csv_run(home, recipe):
    """A run of ``recipe`` trained from ``home`` with paths relative to it; tests then work elsewhere."""
    (home / "data").mkdir(parents=True)
    for name, rows, seed in (("train", 4000, 1), ("valid", 1000, 2), ("test", 1000, 3)):
        write_rows(home / "data" / f"{name}.csv", rows, seed)
    (home / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = ctr("train", "r.yaml", "--out", "run", cwd=home)
    assert result.returncode == 0, result.stderr
    return home, home / "run"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    return trained_csv_run(tmp_path_factory.mktemp("home"), RECIPE)


@pytest.fixture(scope="module")
def optembed_csv_run(tmp_path_factory):
    return trained_csv_run(tmp_path_factory.mktemp("optembed"), {**RECIPE, "embedding": OPTEMBED})


def test_the_readme_names_every_key_of_metrics_json(csv_run):
    """README.md's excerpt of ``metrics.json`` names each key a one-process run writes."""
    _, run = csv_run
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    excerpt = readme[readme.index('{"valid": {"auc"'):]
    excerpt = excerpt[:excerpt.index("```")]
    written = json.loads((run / "metrics.json").read_text())
    assert [key for key in written if f'"{key}"' not in excerpt] == []


def test_eval_from_another_folder_reproduces_the_test_auc(csv_run, tmp_path):
    home, run = csv_run
    result = ctr("eval", run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "metrics.json").read_text())["test"]
    again = json.loads(result.stdout)
    assert abs(again["auc"] - saved["auc"]) < 1e-6 and abs(again["logloss"] - saved["logloss"]) < 1e-6


def test_eval_scores_every_row_in_an_environment_of_a_launched_group(csv_run, monkeypatch):
    """Under a launcher's environment (WORLD_SIZE=2, RANK=1: a torchrun or cluster job) ctr eval
    scored rank 1's half of the split, alone, and printed its AUC as the split's."""
    from ctr.train.runner import evaluate

    home, run = csv_run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    saved = json.loads((run / "metrics.json").read_text())["test"]
    again = evaluate(run)
    assert abs(again["auc"] - saved["auc"]) < 1e-6 and abs(again["logloss"] - saved["logloss"]) < 1e-6


@contextlib.contextmanager
def rewritten(path: Path, text: str):
    """``path`` (an input of the shared csv run) holding ``text`` for a while: then its content
    and modification time as they were (the run's saved key stamps both)."""
    original, stamp = path.read_bytes(), path.stat()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


def test_eval_never_refits_after_the_training_file_grows(csv_run, tmp_path):
    home, run = csv_run
    train = home / "data" / "train.csv"
    grown = train.read_text() + "".join(f"1,7,new{i},newb{i},0.5\n" for i in range(300))  # new tokens: a re-fit grows
    with rewritten(train, grown):
        result = ctr("eval", run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(json.loads(result.stdout)["auc"] - saved["auc"]) < 1e-6


def test_eval_on_a_new_file_reports_out_of_vocabulary_ids(csv_run, tmp_path):
    _, run = csv_run
    frame = write_rows(tmp_path / "new.csv", 500, seed=9, tokens=40)  # tokens 20..39 are unseen
    result = ctr("eval", run, "--data", tmp_path / "new.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["rows"] == 500 and 0 < metrics["auc"] < 1
    unseen = int((frame["a"].str[1:].astype(int) >= 20).sum())
    assert metrics["oov"]["a"] == {"ids": 500, "oov": unseen}


def test_predict_on_the_test_split_reproduces_the_test_auc(csv_run, tmp_path):
    home, run = csv_run
    out = tmp_path / "scores.parquet"
    result = ctr("predict", run, home / "data" / "test.csv", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rows/s" in result.stderr
    scores = pq.read_table(out).to_pandas()
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert len(scores) == 1000 and scores["score"].between(0, 1).all()
    assert abs(auc(scores["label"].to_numpy(), scores["score"].to_numpy()) - saved["auc"]) < 1e-6
    reported = json.loads(result.stdout)
    assert abs(reported["auc"] - saved["auc"]) < 1e-6 and abs(reported["gauc"] - saved["gauc"]) < 1e-6


def test_predict_into_a_tsv_quotes_only_what_needs_quotes(csv_run, tmp_path):
    """pyarrow quoted every name of the header ('"score"\t"label"') and every string value
    (an amazon key column's "u1"), quotes that cut and awk keep (test_score_files: which are
    quoted)."""
    home, run = csv_run
    result = run_ctr("predict", run, home / "data" / "test.csv", "--out", tmp_path / "scores.tsv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "scores.tsv").read_text().splitlines()[0] == "score\tlabel"
    written = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    assert list(written.columns) == ["score", "label"] and len(written) == 1000
    assert abs(json.loads(result.stdout)["auc"] - auc(written["label"].to_numpy(), written["score"].to_numpy())) < 1e-9


def test_predict_of_a_bf16_run_reproduces_its_test_metrics(tmp_path):
    """Predict scored in fp32 a run that Lightning evaluated under bf16 autocast: its AUC and
    group AUC were not the run's."""
    home, run = trained_csv_run(tmp_path / "home", {**RECIPE, "trainer": {**RECIPE["trainer"], "precision": "bf16-mixed"}})
    result = ctr("predict", run, home / "data" / "test.csv", "--out", tmp_path / "scores.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    saved, reported = json.loads((run / "metrics.json").read_text())["test"], json.loads(result.stdout)
    assert abs(reported["auc"] - saved["auc"]) < 1e-9 and abs(reported["gauc"] - saved["gauc"]) < 1e-9


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU scores the GPU run")
def test_a_run_trained_on_a_gpu_evaluates_and_predicts_on_a_machine_without_one(csv_run, tmp_path):
    """Its recipe names the GPU (and fp16 autocast, a GPU kernel): eval and predict refused to
    run, and neither takes -o; they score on the CPU, saying so, and agree with each other."""
    home, run = csv_run
    shutil.copytree(run, tmp_path / "gpu_run")
    kept = yaml.safe_load((tmp_path / "gpu_run" / "recipe.yaml").read_text())
    kept["trainer"].update(accelerator="gpu", precision="16-mixed")
    kept["embedding"]["backend"] = "fbgemm"
    (tmp_path / "gpu_run" / "recipe.yaml").write_text(yaml.safe_dump(kept))
    evaluated = ctr("eval", tmp_path / "gpu_run")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "trained on a GPU (trainer.accelerator: gpu); this machine has none: scoring on the CPU" in evaluated.stderr
    scored = ctr("predict", tmp_path / "gpu_run", home / "data" / "test.csv", "--out", tmp_path / "scores.csv")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert abs(json.loads(scored.stdout)["auc"] - json.loads(evaluated.stdout)["auc"]) < 1e-9


def test_eval_of_a_file_without_labels_is_one_line_not_a_loss_against_zeros(csv_run, tmp_path):
    home, run = csv_run
    pd.read_csv(home / "data" / "test.csv").drop(columns=["label"]).to_csv(tmp_path / "unlabelled.csv", index=False)
    result = ctr("eval", run, "--data", tmp_path / "unlabelled.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip() == (f"ctr: error: {tmp_path / 'unlabelled.csv'}: its rows have no labels, and ctr eval "
                                     "scores against them (`ctr predict` scores unlabelled rows)")


@pytest.mark.parametrize("split", ["test", "valid"])
def test_eval_of_a_file_refuses_any_split_given_with_it(split, capsys):
    """``--data FILE --split test`` evaluated FILE's every row: the split was read as not given
    (test is its default), though FILE's rows are no split of the recipe's data."""
    assert main(["eval", "run", "--data", "rows.csv", "--split", split]) == 2
    assert capsys.readouterr().err.strip() == "ctr: error: eval: --data evaluates a whole file; give no --split with it"


@pytest.mark.parametrize("name, plain", [("scores.csv.gz", "scores.csv"), ("scores.TSV.bz2", "scores.TSV")])
def test_predict_into_a_compressed_csv_name_is_refused(name, plain, tmp_path, capsys):
    """``--out scores.csv.gz`` wrote a parquet file under that name (its last suffix is no CSV
    one): a reader of gzip-compressed CSV failed on it."""
    assert main(["predict", "run", "rows.csv", "--out", str(tmp_path / name)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {tmp_path / name}: scores are written uncompressed, as CSV (.csv), TSV (.tsv) or parquet "
        f"(another name); name it {plain}")
    assert list(tmp_path.iterdir()) == []


def test_predict_into_a_parquet_name_holding_csv_is_not_refused_for_it(tmp_path, capsys):
    """``scores.csv.parquet`` names a parquet file: only a compressed CSV name is refused."""
    assert main(["predict", str(tmp_path / "run"), "rows.csv", "--out", str(tmp_path / "scores.csv.parquet")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: {tmp_path / 'run'}: no such run directory"


TERMINATED_WHILE_SCORING = """
import os, signal, sys
import ctr.train.saved as saved
from ctr.cli import main

encode = saved.encode_rows
def encode_then_sigterm(*args, **kwargs):
    encoded = encode(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return encoded
for module in ("ctr.train.predict", "ctr.train.runner"):
    __import__(module)
    sys.modules[module].encode_rows = encode_then_sigterm
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_sigterm_while_scoring_removes_the_encoded_copy_and_the_half_written_output(csv_run, tmp_path, command):
    """SIGTERM ended ``ctr predict`` (and ``eval``'s encoding) without a word, leaving the
    encoded copy of the input in the temporary folder and a partial output beside --out."""
    home, run = csv_run
    (tmp_path / "tmp").mkdir()
    given = home / "data" / "test.csv"
    args = [run, given, "--out", tmp_path / "scores.csv"] if command == "predict" else [run, "--data", given]
    ended = subprocess.run([sys.executable, "-c", TERMINATED_WHILE_SCORING, command, *map(str, args)],
                           capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert ended.returncode == 143 and ended.stderr.strip().endswith("ctr: terminated (SIGTERM)"), ended.stderr[-2000:]
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("ctr-")] == []  # not torch's caches
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".scores")]


@pytest.mark.parametrize("command", ["predict", "export"])
def test_ctrl_c_before_the_output_is_written_removes_the_folders_made_for_it(csv_run, tmp_path, monkeypatch, capsys,
                                                                           command):
    """Ctrl+C as ``ctr predict`` or ``ctr export`` put its output in place left the new folders
    made for --out behind, empty; a folder that was there before stays."""
    home, run = csv_run
    replace = os.replace

    def ctrl_c_in_the_out_folder(source, target):
        if Path(target).parent.name == "made":
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", ctrl_c_in_the_out_folder)
    (tmp_path / "old" / "made").mkdir(parents=True)
    given = [run, home / "data" / "test.csv"] if command == "predict" else [run]
    for folder in (tmp_path / "new" / "made", tmp_path / "old" / "made"):
        out = folder / ("s.csv" if command == "predict" else "m.pt2")
        assert main([command, *map(str, given), "--out", str(out)]) == 130
        assert capsys.readouterr().err.strip().endswith("ctr: interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert list((tmp_path / "old" / "made").iterdir()) == []


def test_predict_without_labels_writes_csv_scores(csv_run, tmp_path):
    home, run = csv_run
    rows = pd.read_csv(home / "data" / "test.csv").drop(columns=["label", "user"])
    rows.to_csv(tmp_path / "unlabelled.csv", index=False)
    out = tmp_path / "scores.csv"
    result = ctr("predict", run, tmp_path / "unlabelled.csv", "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["score"] and len(scores) == 1000
    assert "auc" not in json.loads(result.stdout)
    tsv = ctr("predict", run, home / "data" / "test.csv", "--out", tmp_path / "scores.tsv", cwd=tmp_path)
    assert tsv.returncode == 0, tsv.stderr
    tab_separated = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    assert list(tab_separated.columns) == ["score", "label"]
    assert tab_separated["score"].tolist() == scores["score"].tolist()


@pytest.mark.parametrize("second_unlabelled", [False, True])
def test_predict_on_a_folder_whose_files_disagree_on_the_label_is_one_line(csv_run, tmp_path, second_unlabelled):
    """A folder of one labelled and one unlabelled file: the first file decides whether the
    label is read, so the other is refused by name (a KeyError traceback before)."""
    home, run = csv_run
    rows = pd.read_csv(home / "data" / "test.csv").head(30)
    (tmp_path / "in").mkdir()
    names = ("0.csv", "1.csv") if second_unlabelled else ("1.csv", "0.csv")  # (labelled, unlabelled)
    rows.to_csv(tmp_path / "in" / names[0], index=False)
    rows.drop(columns=["label"]).to_csv(tmp_path / "in" / names[1], index=False)
    result = ctr("predict", run, tmp_path / "in", "--out", tmp_path / "s.csv", cwd=tmp_path)
    said = "lacks" if second_unlabelled else "holds"
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"ctr: error: {tmp_path / 'in' / '1.csv'}: {said} column 'label', unlike the input's first file (score files "
        "that agree on the label and group columns)")
    assert not (tmp_path / "s.csv").exists()


def test_predict_on_a_folder_without_files_names_the_folder_not_a_recipe_key(csv_run, tmp_path):
    """It read ``data.path: folder ... holds no files``: the folder came from the command line."""
    _, run = csv_run
    (tmp_path / "empty").mkdir()
    result = ctr("predict", run, tmp_path / "empty", "--out", tmp_path / "s.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"ctr: error: folder {tmp_path / 'empty'} holds no files matching '*'"


def test_predict_bad_row_is_the_training_error(csv_run, tmp_path):
    _, run = csv_run
    bad = tmp_path / "bad.csv"
    bad.write_text("label,user,a,b,x\n1,3,a1,b2,0.1\n0,4,a2,b3,inf\n")
    result = ctr("predict", run, bad, "--out", tmp_path / "s.parquet", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}:3: column 'x': not a finite number: 'inf'" in result.stderr
    assert not (tmp_path / "s.parquet").exists()


def skipping_copy(csv_run, tmp_path):
    """The csv run's home and a copy of the run whose recipe skips bad rows."""
    home, trained = csv_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["on_bad_rows"] = "skip"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return home, run


def test_predict_skipping_bad_rows_numbers_the_scored_input_rows(csv_run, tmp_path):
    """With ``on_bad_rows: skip`` the scores leave rows out: a ``row`` column joins each back
    to its input row (numbered from 0 over the folder's files in read order)."""
    home, run = skipping_copy(csv_run, tmp_path)
    rows = pd.read_csv(home / "data" / "test.csv").head(40).astype({"x": object})
    for bad in (0, 7, 8, 21, 39):
        rows.loc[bad, "x"] = "inf"
    (tmp_path / "in").mkdir()
    rows.head(25).to_csv(tmp_path / "in" / "0.csv", index=False)
    rows.tail(15).to_csv(tmp_path / "in" / "1.csv", index=False)
    result = ctr("predict", run, tmp_path / "in", "--out", tmp_path / "s.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(tmp_path / "s.csv")
    assert list(scores.columns) == ["row", "score", "label"]
    assert scores["row"].tolist() == [r for r in range(40) if r not in (0, 7, 8, 21, 39)]
    whole = ctr("predict", run, home / "data" / "test.csv", "--out", tmp_path / "all.csv", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    alone = pd.read_csv(tmp_path / "all.csv").set_index("row")["score"]
    assert np.allclose(scores["score"], alone.loc[scores["row"]].to_numpy(), atol=1e-6)


def test_predict_whose_every_row_is_skipped_names_its_input(csv_run, tmp_path):
    """It said ``data: no rows to encode from dataset 'csv'``, naming neither the input nor why."""
    home, run = skipping_copy(csv_run, tmp_path)
    rows = pd.read_csv(home / "data" / "test.csv").head(5).astype({"x": object})
    rows["x"] = "inf"
    rows.to_csv(tmp_path / "bad.csv", index=False)
    result = ctr("predict", run, tmp_path / "bad.csv", "--out", tmp_path / "s.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"ctr: error: {tmp_path / 'bad.csv'}: no rows to encode (it holds none, or every one was skipped as bad)")
    assert not (tmp_path / "s.csv").exists()


def test_a_log_square_value_past_its_range_is_a_bad_row_in_predict_and_eval(tmp_path, capsys):
    """log_square keeps round(x) of x <= 2: -1e39 was scored nan (auc and logloss null for
    the whole file) and -1e19 stopped a categorical's predict with a traceback. Both are bad
    rows, as in training, left out under on_bad_rows: skip."""
    rng = np.random.default_rng(3)
    label, m, c = rng.integers(0, 2, 400), rng.integers(0, 50, 400), rng.integers(0, 50, 400)
    pd.DataFrame({"label": label, "m": m, "c": c}).to_csv(tmp_path / "train.csv", index=False)
    features = [{"name": "m", "kind": "numeric", "transform": "log_square"}, {"name": "c", "transform": "log_square"}]
    recipe = {**RECIPE, "data": {"dataset": "csv", "path": str(tmp_path / "train.csv"), "label": "label",
                                 "cache_dir": str(tmp_path / "cache"), "features": features}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(run)]) == 0
    bad = tmp_path / "bad.csv"
    scores = tmp_path / "s.csv"
    commands = (["predict", str(run), str(bad), "--out", str(scores)], ["eval", str(run), "--data", str(bad)])
    refused = {"0,-1e39,5": "column 'm': '-1e39' is past the float32 range (±3.403e+38) of the encoded data",
               "0,4,-1e19": "column 'c': '-1e19' is past the int64 range (±9.223e+18) of a log_square token"}
    for rows, message in refused.items():
        bad.write_text(f"label,m,c\n1,3,4\n{rows}\n1,5,7\n")
        for command in commands:
            capsys.readouterr()
            assert main(command) == 2
            assert capsys.readouterr().err.strip().splitlines()[-1] == f"ctr: error: {bad}:3: {message}"
    assert not scores.exists()
    skipping = yaml.safe_load((run / "recipe.yaml").read_text())
    skipping["data"]["on_bad_rows"] = "skip"
    (run / "recipe.yaml").write_text(yaml.safe_dump(skipping))
    bad.write_text("label,m,c\n1,3,4\n0,-1e39,5\n1,4,-1e19\n0,-1e300,6\n1,5,-7\n0,2,3\n")
    capsys.readouterr()
    assert main(commands[0]) == 0
    scored = pd.read_csv(scores)
    assert scored["row"].tolist() == [0, 4, 5] and np.isfinite(scored["score"]).all()
    capsys.readouterr()
    assert main(commands[1]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["rows"] == 3 and 0 <= metrics["auc"] <= 1 and math.isfinite(metrics["logloss"])


# score_row.py as documented (``python score_row.py MODEL ROW``): one process for a module's
# requests (one torch import), never with ctr imported; a request (a line of JSON: its folder,
# model and rows) gets a line of JSON: what the snippet printed for each row, or its traceback
SNIPPET_SERVER = """
import contextlib, io, json, os, runpy, sys, traceback
for line in sys.stdin:
    request, printed, error = json.loads(line), io.StringIO(), None
    os.chdir(request["cwd"])
    try:
        with contextlib.redirect_stdout(printed):
            for row in request["rows"]:
                sys.argv = ["score_row.py", request["model"], row]
                runpy.run_path("score_row.py", run_name="__main__")
    except BaseException:
        error = traceback.format_exc()
    ctr = [m for m in sys.modules if m == "ctr" or m.startswith("ctr.")]
    print(json.dumps({"printed": printed.getvalue(), "error": error, "ctr": ctr}), flush=True)
"""


@pytest.fixture(scope="module")
def score_rows():
    """Runs docs/export.md's snippet on raw rows (JSON objects) with an exported model, in a
    process without ctr: the scores it printed."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
    snippet = docs.split("```python\n", 1)[1].split("```", 1)[0]
    server = subprocess.Popen([sys.executable, "-c", SNIPPET_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)

    def scores(model: Path, rows: list[str]) -> list[float]:
        (model.parent / "score_row.py").write_text(snippet)
        server.stdin.write(json.dumps({"cwd": str(model.parent), "model": str(model), "rows": rows}) + "\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        assert answer["error"] is None, answer["error"][-2000:]
        assert answer["ctr"] == [], answer["ctr"]
        return [float(line) for line in answer["printed"].split()]

    yield scores
    server.stdin.close()
    server.wait()


def snippet_scores_like_predict(run, test_file, columns, rows, tmp_path, score_rows):
    """docs/export.md's snippet, run without ctr on raw ``rows`` of ``test_file``, gives
    predict's scores of them."""
    assert ctr("export", run, "--out", tmp_path / "model.pt2", cwd=tmp_path).returncode == 0
    test_rows = pd.read_csv(test_file, dtype=str, keep_default_na=False)
    result = ctr("predict", run, test_file, "--out", tmp_path / "scores.parquet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = pq.read_table(tmp_path / "scores.parquet")["score"].to_numpy()
    raw_rows = [json.dumps({k: test_rows.loc[i, k] for k in columns}) for i in rows]
    assert score_rows(tmp_path / "model.pt2", raw_rows) == pytest.approx([scores[i] for i in rows], abs=1e-5)


def test_the_documented_snippet_scores_an_exported_row_like_predict(csv_run, tmp_path, score_rows):
    home, run = csv_run
    snippet_scores_like_predict(run, home / "data" / "test.csv", ("a", "b", "x"), (0, 1, 7), tmp_path, score_rows)


def test_the_documented_snippet_scores_sequence_features_like_predict(tmp_path, score_rows):
    """A sum-pooled sequence (``^``-separated, last 3 items kept): rows with no items, with
    an empty item, and with more items than max_len score as predict scores them."""
    rng = np.random.default_rng(4)
    tags = ["^".join(f"t{v}" for v in rng.integers(0, 9, rng.integers(0, 6))) for _ in range(800)]
    tags[:3] = ["", "t1^^t2", "t1^t2^t3^t4^t5"]
    frame = pd.DataFrame({"label": rng.integers(0, 2, 800), "a": [f"a{v}" for v in rng.integers(0, 5, 800)], "tags": tags})
    frame.iloc[:700].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[700:].to_csv(tmp_path / "test.csv", index=False)
    frame.iloc[:3].to_csv(tmp_path / "probe.csv", index=False)
    recipe = {**RECIPE, "data": {"dataset": "csv", "path": str(tmp_path / "train.csv"), "label": "label",
                                 "test_path": str(tmp_path / "test.csv"), "cache_dir": str(tmp_path / "cache"),
                                 "features": [{"name": "a"}, {"name": "tags", "kind": "sequence", "max_len": 3}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    snippet_scores_like_predict(tmp_path / "run", tmp_path / "probe.csv", ("a", "tags"), (0, 1, 2), tmp_path,
                                score_rows)


def test_the_documented_snippet_scores_hashed_oov_buckets_and_log_square_tokens_like_predict(tmp_path, score_rows):
    """Unseen tokens of a feature with oov_buckets: 4 land in predict's bucket (ids past a
    num_ids feature's range too), and counts read as log_square categories get predict's
    tokens (inputs.json said neither before)."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"label": rng.integers(0, 2, 800), "a": [f"a{v}" for v in rng.integers(0, 6, 800)],
                          "n": rng.poisson(12, 800), "k": rng.integers(0, 5, 800)})
    frame.iloc[:700].to_csv(tmp_path / "train.csv", index=False)
    probe = frame.iloc[:4].copy()
    probe["a"] = ["zz1", "zz2", "a1", "zz3"]  # unseen tokens hash into the 4 buckets
    probe["n"] = [0, 2, 3, 40]
    probe["k"] = [1, 9, 6, -3]  # ids past num_ids 5 hash by id mod 4
    probe.to_csv(tmp_path / "probe.csv", index=False)
    features = [{"name": "a", "oov_buckets": 4}, {"name": "n", "transform": "log_square"},
                {"name": "k", "num_ids": 5, "oov_buckets": 4}]
    recipe = {**RECIPE, "data": {"dataset": "csv", "path": str(tmp_path / "train.csv"), "label": "label",
                                 "cache_dir": str(tmp_path / "cache"), "features": features}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    snippet_scores_like_predict(tmp_path / "run", tmp_path / "probe.csv", ("a", "n", "k"), (0, 1, 2, 3), tmp_path,
                                score_rows)


def test_the_documented_snippet_scores_log_square_and_quantile_numbers_like_predict(tmp_path, score_rows):
    """Numeric features with ``transform: log_square`` (missing, rounded halves, past 2) and
    ``quantile`` (at a boundary, missing, below the first, between two, past the last): the
    snippet's numbers are predict's (it passed the raw number on for both)."""
    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"label": rng.integers(0, 2, 800), "a": [f"a{v}" for v in rng.integers(0, 6, 800)],
                          "n": rng.poisson(12, 800).astype(float), "q": rng.integers(0, 50, 800)})
    frame.iloc[:700].to_csv(tmp_path / "train.csv", index=False)
    features = [{"name": "a"}, {"name": "n", "kind": "numeric", "transform": "log_square"},
                {"name": "q", "kind": "numeric", "transform": "quantile", "num_buckets": 10, "fill": 0.5}]
    recipe = {**RECIPE, "data": {"dataset": "csv", "path": str(tmp_path / "train.csv"), "label": "label",
                                 "cache_dir": str(tmp_path / "cache"), "features": features}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    schema = json.loads((tmp_path / "run" / "schema" / "schema.json").read_text())
    boundaries = next(f["numeric"]["boundaries"] for f in schema["features"] if f["spec"]["name"] == "q")
    probe = pd.DataFrame({"label": [0, 1, 0, 1, 0], "a": ["a1", "a2", "a3", "a4", "a5"],
                          "n": ["", "1.5", "2.5", "3", "40"],
                          "q": [boundaries[2], "", -3, (boundaries[4] + boundaries[5]) / 2, 99]})
    probe.to_csv(tmp_path / "probe.csv", index=False)
    snippet_scores_like_predict(tmp_path / "run", tmp_path / "probe.csv", ("a", "n", "q"), range(5), tmp_path,
                                score_rows)


def test_an_optembed_run_evaluates_predicts_and_exports_as_it_was_tested(optembed_csv_run, tmp_path, score_rows):
    """The retrained OptEmbed (shared pruned format): ``ctr eval`` and ``ctr predict`` give
    metrics.json's test AUC and logloss, and its exported program scores rows as predict does."""
    home, run = optembed_csv_run
    saved = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "stages" / "2-retrain" / "summary.json").read_text())["format"] in ("bitmap", "csr")
    evaluated = ctr("eval", run, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads(evaluated.stdout)
    assert abs(again["auc"] - saved["test"]["auc"]) < 1e-6 and abs(again["logloss"] - saved["test"]["logloss"]) < 1e-6
    predicted = ctr("predict", run, home / "data" / "test.csv", "--out", tmp_path / "scores.parquet", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    scores = pq.read_table(tmp_path / "scores.parquet").to_pandas()
    assert abs(auc(scores["label"].to_numpy(), scores["score"].to_numpy()) - saved["test"]["auc"]) < 1e-6
    exported = ctr("export", run, "--out", tmp_path / "model.pt2", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    test_rows = pd.read_csv(home / "data" / "test.csv", dtype=str)
    printed = score_rows(tmp_path / "model.pt2", [json.dumps({k: test_rows.loc[i, k] for k in ("a", "b", "x")})
                                                  for i in (0, 5)])
    assert len(printed) == 2 and all(abs(p - scores["score"][i]) < 1e-5 for p, i in zip(printed, (0, 5))), printed


def test_a_run_whose_method_never_read_its_saved_backend_evaluates_predicts_and_exports(optembed_csv_run, tmp_path):
    """An earlier ctr kept ``embedding.backend`` for OptEmbed (which does its own lookups, and
    now refuses the key): the run still loads, as it was trained."""
    home, run = optembed_csv_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for kept in (old / "recipe.yaml", old / "schema" / "recipe.yaml"):
        raw = yaml.safe_load(kept.read_text())
        raw["embedding"]["backend"] = "triton"
        kept.write_text(yaml.safe_dump(raw))
    saved = json.loads((run / "metrics.json").read_text())
    evaluated = ctr("eval", old, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert abs(json.loads(evaluated.stdout)["auc"] - saved["test"]["auc"]) < 1e-6
    predicted = ctr("predict", old, home / "data" / "test.csv", "--out", tmp_path / "scores.csv", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    exported = ctr("export", old, "--out", tmp_path / "model.pt2", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]


def test_eval_of_a_run_whose_frequencies_are_gone_is_one_line(csv_run, tmp_path):
    """Frequency-sized methods are rebuilt from schema/counts.npz: a run folder without it
    names the file instead of a traceback."""
    import shutil

    _, run = csv_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "schema" / "counts.npz").unlink()
    result = ctr("eval", copy, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"ctr: error: {copy / 'schema'}: no saved training frequencies (counts.npz)"


@pytest.mark.parametrize("name, damage", [
    ("schema.json", lambda path: path.write_text("{")),
    ("schema.json", lambda path: path.write_text("[]")),
    ("schema.json", lambda path: path.write_text('{"label": "label"}')),
    ("counts.npz", lambda path: path.write_text("xx")),
    ("counts.npz", lambda path: path.write_bytes(path.read_bytes()[:40])),
    ("vocab/a.parquet", lambda path: path.write_text("xx")),
    ("vocab/a.parquet", lambda path: path.unlink()),
    ("vocab/a.parquet", lambda path: pq.write_table(pq.read_table(path).drop_columns(["count"]), path)),
])
def test_a_damaged_saved_schema_is_one_line_naming_its_file(csv_run, tmp_path, name, damage):
    """A run folder whose saved schema, frequencies or a vocabulary is cut short, not of its
    format, or gone: ``ctr eval``, ``ctr predict`` and ``ctr export`` (which copied a damaged
    vocabulary beside its program, or exported without one) name the file, no traceback."""
    home, run = csv_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    damage(copy / "schema" / name)
    for command in (("eval", copy), ("predict", copy, home / "data" / "test.csv", "--out", tmp_path / "s.csv"),
                    ("export", copy, "--out", tmp_path / "m.pt2")):
        result = ctr(*command, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
        assert result.stderr.startswith(f"ctr: error: {copy / 'schema' / name}: "), result.stderr
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "m.pt2").exists()


def test_scoring_a_file_with_a_run_of_generated_rows_is_one_line(tmp_path):
    """A synthetic run's rows come from its generator: ``ctr predict`` and ``ctr eval --data``
    cannot read a file with it, and say so instead of scoring regenerated rows."""
    from ctr.recipe import load_recipe
    from ctr.train.runner import train
    from tests.conftest import tiny_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, trainer={"progress_bar": False, "num_threads": 1})))
    train(load_recipe(recipe), tmp_path / "run")
    rows = tmp_path / "rows.tsv"
    rows.write_text("garbage\n")
    for command in (("predict", tmp_path / "run", rows, "--out", tmp_path / "scores.parquet"),
                    ("eval", tmp_path / "run", "--data", rows)):
        result = ctr(*command)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"ctr: error: {rows}: a synthetic run's rows are generated"), result.stderr
    assert not (tmp_path / "scores.parquet").exists()


def test_predict_on_a_headerless_run_reads_rows_without_the_label(tmp_path):
    """Without a header, the rows to score may lack the label column of data.columns (and
    the group's): the first line's field count tells; the scores are those of labelled rows."""
    frame = write_rows(tmp_path / "with_header.csv", 600, 1)[["a", "label", "user", "b", "x"]]
    frame.to_csv(tmp_path / "rows.csv", index=False, header=False)
    recipe = {**RECIPE, "data": {**RECIPE["data"], "path": str(tmp_path / "rows.csv"), "header": False,
                                 "columns": list(frame.columns), "valid_path": None, "test_path": None,
                                 "cache_dir": str(tmp_path / "cache")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    scores = {}
    for name, columns in (("labelled", list(frame.columns)), ("no_label", ["a", "user", "b", "x"]),
                          ("neither", ["a", "b", "x"])):
        frame[columns].head(50).to_csv(tmp_path / f"{name}.csv", index=False, header=False)
        assert main(["predict", str(tmp_path / "run"), str(tmp_path / f"{name}.csv"),
                     "--out", str(tmp_path / f"{name}_scores.csv")]) == 0
        scores[name] = pd.read_csv(tmp_path / f"{name}_scores.csv")["score"].to_numpy()
    assert len(scores["labelled"]) == 50
    assert np.array_equal(scores["labelled"], scores["no_label"]) and np.array_equal(scores["labelled"], scores["neither"])


@pytest.mark.parametrize("given", ["valid", "test"])
def test_eval_reproduces_a_split_carved_from_the_training_file(tmp_path, given):
    """With one split file (valid_path or test_path) the other split is carved from the
    training rows: ``ctr eval`` re-reads it from there and gives metrics.json's figures."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    for name, rows, seed in (("train", 3000, 1), (given, 600, 2)):
        write_rows(home / "data" / f"{name}.csv", rows, seed)
    data = {key: value for key, value in RECIPE["data"].items() if key not in ("valid_path", "test_path")}
    recipe = {**RECIPE, "data": {**data, f"{given}_path": f"data/{given}.csv", "split": {"valid": 0.2, "test": 0.2}}}
    (home / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert ctr("train", "r.yaml", "--out", "run", cwd=home).returncode == 0
    saved = json.loads((home / "run" / "metrics.json").read_text())
    for split in ("valid", "test"):
        result = ctr("eval", home / "run", "--split", split, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert abs(json.loads(result.stdout)["auc"] - saved[split]["auc"]) < 1e-6


def test_predict_and_export_refuse_to_overwrite_their_input_or_the_run(csv_run, tmp_path):
    home, run = csv_run
    source = tmp_path / "rows.csv"
    source.write_bytes((home / "data" / "test.csv").read_bytes())
    done = ctr("predict", run, source, "--out", source, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"ctr: error: {source}: is the input; write the scores to another file"
    assert source.read_bytes() == (home / "data" / "test.csv").read_bytes()
    best = run / "checkpoints" / "best.ckpt"
    before = best.read_bytes()
    done = ctr("export", run, "--out", best, cwd=tmp_path)
    assert done.returncode == 2 and "inside the run directory" in done.stderr and best.read_bytes() == before
    (tmp_path / "model.pt2.schema").write_text("mine\n")
    done = ctr("export", run, "--out", tmp_path / "model.pt2", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"ctr: error: {tmp_path / 'model.pt2.schema'}: exists and is not a folder (the export's schema goes there); "
        "choose another --out")
    assert (tmp_path / "model.pt2.schema").read_text() == "mine\n" and not (tmp_path / "model.pt2").exists()


@pytest.mark.parametrize("name, text", [("key.json", "{"), ("key.json", "[]"), ("report.json", '{"splits": {}}')])
def test_a_damaged_saved_key_or_report_is_one_line_naming_it(csv_run, tmp_path, name, text):
    """schema/key.json (the input files' stamps) and schema/report.json cut short or not of
    their form: ``ctr eval`` and ``ctr train --resume`` of the run name the file, no traceback."""
    home, run = csv_run
    copy = home / f"damaged-{tmp_path.name}"
    shutil.copytree(run, copy)
    (copy / "schema" / name).write_text(text)
    result = ctr("eval", copy, cwd=home)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert result.stderr.startswith(f"ctr: error: {copy / 'schema' / name}: "), result.stderr
    if name == "key.json":
        (copy / "metrics.json").unlink()  # an unfinished run, as --resume takes one
        result = ctr("train", "--resume", copy, cwd=home)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
        assert result.stderr.startswith(f"ctr: error: {copy / 'schema' / name}: "), result.stderr
    shutil.rmtree(copy)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder no one can create files in")
@pytest.mark.parametrize("name", ["scores.csv", "scores.parquet"])
def test_predict_to_a_folder_that_takes_no_files_is_one_line(csv_run, tmp_path, name):
    """An --out where no file can be created: one line naming it, not the writer's traceback."""
    home, run = csv_run
    out = Path("/proc") / name
    done = ctr("predict", run, home / "data" / "test.csv", "--out", out, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"ctr: error: {out}: cannot be written ("), done.stderr


def test_predict_without_a_bar_logs_the_rows_scored(csv_run, tmp_path, monkeypatch, caplog):
    """Scoring showed neither a bar nor a line (1M Criteo rows: 30 s of silence after their
    encoding, a Criteo day many minutes): it logs the rows scored every PROGRESS_LOG_SECONDS
    (here 0: every batch of 512), as encoding logs the rows read; a terminal gets a bar."""
    import ctr.train.predict as scoring
    from ctr.datasets import progress

    home, run = csv_run
    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    scoring.predict(run, home / "data" / "test.csv", tmp_path / "scores.parquet")
    scored = [m for m in caplog.messages if "rows scored" in m]
    assert [m.split(" rows scored")[0] for m in scored] == ["predict: scoring: 512", "predict: scoring: 1,000"]
    assert re.fullmatch(r"predict: scoring: 1,000 rows scored \([\d,]+ rows/s\)", scored[-1])


def test_predict_on_a_terminal_follows_the_runs_progress_bar_setting(csv_run, tmp_path, monkeypatch, caplog):
    """``ctr predict`` drew bars on a terminal whatever the run's ``trainer.progress_bar``
    (``ctr train`` and ``ctr eval`` follow it): a run trained with ``false`` logs the rows
    scored every PROGRESS_LOG_SECONDS (here 0: every batch of 512) instead."""
    from ctr.datasets import progress

    home, run = csv_run
    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    caplog.set_level(logging.INFO)
    assert main(["predict", str(run), str(home / "data" / "test.csv"), "--out", str(tmp_path / "scores.parquet")]) == 0
    scored = [m.split(" rows scored")[0] for m in caplog.messages if "rows scored" in m]
    assert scored == ["predict: scoring: 512", "predict: scoring: 1,000"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder no one can create files in")
def test_predict_checks_its_out_before_encoding(csv_run, tmp_path, monkeypatch):
    """An --out that is a folder, or where no file can be created, is refused before the input
    is encoded and scored (the scores of a large input were lost at the very end)."""
    import ctr.train.predict as scoring
    from ctr.errors import UserError

    home, run = csv_run
    monkeypatch.setattr(scoring, "encode_rows", lambda *args, **kwargs: pytest.fail("encoded before --out was checked"))
    refused = {tmp_path: f"{tmp_path}: is a folder; name the file to write",
               Path("/proc/scores.csv"): "/proc/scores.csv: cannot be written ("}
    for out, message in refused.items():
        with pytest.raises(UserError) as caught:
            scoring.predict(run, home / "data" / "test.csv", out)
        assert str(caught.value).startswith(message), caught.value
    assert list(tmp_path.iterdir()) == []


def test_predict_and_export_refuse_an_out_that_is_not_a_regular_file(csv_run, tmp_path):
    """An --out that is a fifo (or a device: ``ctr export --out /dev/null`` as root replaced
    /dev/null with the program and wrote ``/dev/null.schema/`` beside it) is refused on one
    line before anything is written; the fifo stays a fifo."""
    import stat

    home, run = csv_run
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    for command in (("export", run, "--out", fifo), ("predict", run, home / "data" / "test.csv", "--out", fifo)):
        done = ctr(*command, cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip() == f"ctr: error: {fifo}: not a regular file (a fifo); name a file to write"
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["scores.fifo"]


def test_predict_and_export_refuse_an_out_among_the_inputs(csv_run, tmp_path):
    """An --out that is one of the run's input files (export replaced data/test.csv), or lies
    inside the input folder or one of the recipe's (predict wrote its scores there once, and
    every later read of the folder failed on them): one line, nothing written."""
    home, trained = csv_run
    test, valid = home / "data" / "test.csv", home / "data" / "valid.csv"
    before = test.read_bytes(), valid.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_bytes(before[0])
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["path"] = str(home / "data")  # a folder of input files
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    refused = {
        ("export", trained, "--out", test): f"{test}: is the run's input (data.test_path); choose another --out",
        ("predict", trained, test, "--out", valid): f"{valid}: is the run's input (data.valid_path); choose another --out",
        ("predict", trained, tmp_path / "in", "--out", tmp_path / "in" / "scores.csv"):
            f"{tmp_path / 'in' / 'scores.csv'}: inside the input folder {tmp_path / 'in'} (a later read of it would take "
            "the scores for rows); choose another --out",
        ("predict", trained, test, "--out", test / "scores.csv"):  # under the input file: no folder is there
            f"{test / 'scores.csv'}: cannot be written (not a directory)",
        ("export", run, "--out", home / "data" / "model.pt2"):
            f"{home / 'data' / 'model.pt2'}: inside the run's input folder {home / 'data'} (data.path); choose another --out",
    }
    for command, message in refused.items():
        done = ctr(*command, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.strip() == f"ctr: error: {message}", done.stderr[-2000:]
    assert (test.read_bytes(), valid.read_bytes()) == before
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["rows.csv"]
    assert not (home / "data" / "model.pt2").exists()


def test_eval_of_a_run_that_is_not_finished_warns_and_uses_its_best_checkpoint(csv_run, tmp_path):
    import shutil

    _, run = csv_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "metrics.json").unlink()
    result = ctr("eval", unfinished, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the run is not finished (no metrics.json); using checkpoints/best.ckpt as it stands" in result.stderr
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(json.loads(result.stdout)["auc"] - saved["auc"]) < 1e-6


def test_predict_needs_a_group_column_that_a_feature_reads(tmp_path, capsys):
    """The group is optional in rows to score, but not when a feature reads that column too:
    it scored every row with the feature out of vocabulary (header or not)."""
    frame = write_rows(tmp_path / "rows.csv", 600, 1)
    features = RECIPE["data"]["features"] + [{"name": "user"}]
    for header in (True, False):
        if not header:
            frame.to_csv(tmp_path / "rows.csv", index=False, header=False)
        data = {**RECIPE["data"], "path": str(tmp_path / "rows.csv"), "valid_path": None, "test_path": None,
                "features": features, "cache_dir": str(tmp_path / "cache"), "header": header,
                "columns": None if header else list(frame.columns)}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "data": data}))
        run = tmp_path / f"run-{header}"
        assert main(["train", str(tmp_path / "r.yaml"), "--out", str(run)]) == 0
        dropped = ["user"] if header else ["label", "user"]  # headerless: the field count tells what is left out
        frame.drop(columns=dropped).head(20).to_csv(tmp_path / "no_user.csv", index=False, header=header)
        capsys.readouterr()
        assert main(["predict", str(run), str(tmp_path / "no_user.csv"), "--out", str(tmp_path / "s.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        if header:
            assert err.startswith("ctr: error: data.group: column 'user' is absent from ") and "no_user.csv" in err, err
        else:
            assert err.startswith("ctr: error: ") and "no_user.csv:1" in err and "field" in err, err
        assert not (tmp_path / "s.csv").exists()


def test_eval_warns_when_a_split_no_longer_has_its_training_rows(csv_run, tmp_path):
    """The test file changed after training: ctr eval still evaluates, and says that these
    metrics are not the run's (it printed them as if they were)."""
    home, run = csv_run
    test = home / "data" / "test.csv"
    with rewritten(test, "".join(test.read_text().splitlines(keepends=True)[:-10])):
        result = ctr("eval", run, cwd=tmp_path)
        valid = ctr("eval", run, "--split", "valid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{run}: the test split now has 990 rows, 1000 in training: its data changed since the run" in result.stderr
    assert valid.returncode == 0 and "changed since" not in valid.stderr, valid.stderr


def test_eval_warns_when_an_input_changed_with_as_many_rows(csv_run, tmp_path):
    """Labels flipped in place: the split has its rows, and ctr eval printed metrics far from
    the run's without a word."""
    home, run = csv_run
    test = home / "data" / "test.csv"
    lines = test.read_text().splitlines(keepends=True)
    with rewritten(test, "".join(lines[:1] + ["0" + line[1:] for line in lines[1:]])):  # every label 0, same size
        result = ctr("eval", run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{run}: input {test.resolve()} changed (its modification time; if its content is as it was, `touch -d @" \
        in result.stderr and "after the run trained; the test split has as many rows, but these metrics may not be " \
        "the run's" in result.stderr


def test_eval_warns_when_the_generator_now_draws_other_rows(tmp_path, monkeypatch, caplog):
    """A synthetic run of generator 4 with interacting_pairs: 0 (every label 0) was scored on
    version 5's rows, as many, without a word."""
    from ctr.datasets.synthetic import SyntheticDataset
    from ctr.recipe import recipe_from_dict
    from ctr.train.runner import evaluate, train
    from tests.conftest import tiny_recipe

    monkeypatch.setattr(SyntheticDataset, "generator_version", 4)
    train(recipe_from_dict(tiny_recipe(tmp_path, data={"interacting_pairs": 0})), tmp_path / "run")
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="ctr.train"):
        evaluate(tmp_path / "run")
    assert (f"{tmp_path / 'run'}: synthetic generator version 4 drew its rows, and this ctr's version 5 draws others "
            "for its recipe: these metrics are not the run's") in caplog.text

def test_an_optembed_run_killed_in_its_last_stage_evaluates_and_exports_as_it_stands(optembed_csv_run, tmp_path):
    """Killed in its retrain stage (that stage unfinished, its checkpoints the run's): eval and
    export refused its best.ckpt as "does not fit this run's model" (the retrain's structure
    was not begun)."""
    import shutil

    _, run = optembed_csv_run
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    (killed / "metrics.json").unlink()
    progress = killed / "stages" / "progress.json"
    record = json.loads(progress.read_text())
    record["finished"].remove("retrain")
    progress.write_text(json.dumps(record))
    shutil.rmtree(killed / "stages" / "2-retrain")
    evaluated = ctr("eval", killed, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(json.loads(evaluated.stdout)["auc"] - saved["auc"]) < 1e-6
    exported = ctr("export", killed, "--out", tmp_path / "model.pt2", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr


MOVIELENS_INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_inter(path, pairs, ratings=None):
    """A MovieLens ``.inter`` file of (user, item) ``pairs``; without ``ratings``, no rating column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = MOVIELENS_INTER if ratings is not None else MOVIELENS_INTER.replace("rating:float\t", "")
    rated = [f"\t{r}" for r in ratings] if ratings is not None else [""] * len(pairs)
    path.write_text(header + "".join(f"{u}\t{i}{r}\t88{k}\n" for k, ((u, i), r) in enumerate(zip(pairs, rated))))
    return path


@pytest.fixture(scope="module")
def movielens_run(tmp_path_factory):
    """A run trained on 600 ratings of 8 users and 10 movies, with their .user and .item files."""
    home = tmp_path_factory.mktemp("movielens")
    rng = np.random.default_rng(4)
    pairs = rng.integers(1, [9, 11], size=(600, 2)).tolist()
    write_inter(home / "ml" / "ml.inter", pairs, rng.integers(1, 6, 600).tolist())
    users = "".join(f"{u}\t{20 + u}\t{'MF'[u % 2]}\tjob{u % 3}\t{u}0\n" for u in range(1, 9))
    (home / "ml" / "ml.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                         + users)
    movies = "".join(f"{i}\tT{i}\t{1990 + i}\tG{i} G{i % 3}\n" for i in range(1, 11))
    (home / "ml" / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                         + movies)
    recipe = {**RECIPE, "data": {"dataset": "movielens", "path": str(home / "ml"), "cache_dir": str(home / "cache")}}
    (home / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(home / "r.yaml"), "--out", str(home / "run")]) == 0
    return home, home / "run"


def predicted(run, given, out):
    assert main(["predict", str(run), str(given), "--out", str(out)]) == 0
    return pd.read_csv(out)


NEW_PAIRS = [(u, i) for u in (3, 1, 9, 7, 2) for i in (2, 11, 5, 1, 8, 10, 4)][:29]  # user 9, item 11: new


def test_predict_of_a_movielens_run_scores_every_pair_of_a_file_without_ratings_or_side_files(movielens_run, tmp_path,
                                                                                              capsys):
    """A new .inter without ratings was refused (``column 'rating' is absent``), and without
    .user / .item beside it failed on the first attribute: every pair is scored, in input
    order, with the training's side files, as the same pairs rated (1 or 5) beside copies of them."""
    home, run = movielens_run
    scores = predicted(run, write_inter(tmp_path / "new" / "pairs.inter", NEW_PAIRS), tmp_path / "new.csv")
    assert list(scores.columns) == ["score"] and len(scores) == 29 and scores["score"].nunique() > 20
    beside = write_inter(tmp_path / "beside" / "pairs.inter", NEW_PAIRS[::-1], [1, 5] * 14 + [1])
    for side in ("user", "item"):
        shutil.copy(home / "ml" / f"ml.{side}", tmp_path / "beside" / f"pairs.{side}")
    reversed_scores = predicted(run, beside, tmp_path / "beside.csv")
    assert list(reversed_scores.columns) == ["row", "score", "label"]
    assert reversed_scores["row"].tolist() == list(range(29))
    assert np.allclose(scores["score"], reversed_scores["score"][::-1], rtol=0, atol=1e-12)  # float sums in batches
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(beside)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["rows"] == 29
    assert abs(evaluated["auc"] - auc(reversed_scores["label"].to_numpy(), reversed_scores["score"].to_numpy())) < 1e-9


def test_predict_of_a_movielens_run_leaves_out_ratings_of_3_and_numbers_the_scored_rows(movielens_run, tmp_path):
    """Scored ratings came out in the order of the split's streams, ratings of 3 left out,
    so no score could be joined back to its row: a ``row`` column numbers them."""
    home, run = movielens_run
    ratings = [3, 5, 1, 4, 3, 3, 2] * 4 + [3]
    rated = write_inter(tmp_path / "rated" / "ml.inter", NEW_PAIRS, ratings)
    for side in ("user", "item"):
        shutil.copy(home / "ml" / f"ml.{side}", tmp_path / "rated")
    scores = predicted(run, rated, tmp_path / "rated.csv")
    kept = [k for k, r in enumerate(ratings) if r != 3]
    assert list(scores.columns) == ["row", "score", "label"] and scores["row"].tolist() == kept
    assert scores["label"].tolist() == [int(ratings[k] >= 4) for k in kept]
    every = predicted(run, write_inter(tmp_path / "pairs.inter", NEW_PAIRS), tmp_path / "every.csv")["score"]
    assert np.allclose(scores["score"], every[kept], rtol=0, atol=1e-12)
