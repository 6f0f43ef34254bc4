"""Recipe shorthands (``data.features`` by exception, ``data.columns: auto``), the encoded-data
cache key (independent of the training seed) and ``ctr data clean``."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ctr.cli import main
from ctr.datasets import prepare
from ctr.datasets import cache, preprocess
from ctr.datasets.source import resolve_features
from ctr.errors import RecipeError
from ctr.recipe import load_recipe, recipe_from_dict
from ctr.train.runner import train
from tests.conftest import tiny_recipe

SHORTHAND = {"default_kind": "categorical", "specs": [{"name": "price", "kind": "numeric", "transform": "log1p"}],
             "skip": ["row_id"]}


def write_csv(path, rows=600):
    rng = np.random.default_rng(0)
    lines = ["row_id,a,click,b,price"]
    for i in range(rows):
        a, b = rng.integers(0, 20, 2)
        lines.append(f"{i},a{a},{int((a + b) % 3 == 0)},b{b},{rng.random() * 10:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_recipe(tmp_path, features=SHORTHAND, **train):
    path = tmp_path / "rows.csv"
    if not path.exists():
        write_csv(path)
    raw = tiny_recipe(tmp_path, train={"batch_size": 128, **train})
    raw["data"] = {"dataset": "csv", "path": str(path), "label": "click", "columns": "auto", "features": features,
                   "cache_dir": str(tmp_path / "cache")}
    return raw


def test_shorthand_resolves_in_column_order_with_its_exceptions(tmp_path):
    data = resolve_features(recipe_from_dict(csv_recipe(tmp_path)).data)
    assert [(f.name, f.kind, f.transform) for f in data.features] == [
        ("a", "categorical", "none"), ("b", "categorical", "none"), ("price", "numeric", "log1p")]


def test_shorthand_and_the_explicit_list_share_one_cache_entry(tmp_path):
    short = prepare(recipe_from_dict(csv_recipe(tmp_path)).data, progress=False)
    explicit = [{"name": "a"}, {"name": "b"}, {"name": "price", "kind": "numeric", "transform": "log1p"}]
    assert prepare(recipe_from_dict(csv_recipe(tmp_path, explicit)).data, progress=False).root == short.root


def test_the_run_recipe_lists_the_resolved_features(tmp_path):
    train(recipe_from_dict(csv_recipe(tmp_path)), tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert [f["name"] for f in saved["data"]["features"]] == ["a", "b", "price"]
    assert load_recipe(tmp_path / "run" / "recipe.yaml").data.features[2].kind == "numeric"


@pytest.mark.parametrize(
    "features, message",
    [
        ({"default_kind": "dense"}, r"^data\.features\.default_kind: expected one of"),
        ({"specs": [{"name": "price", "kind": "number"}]}, r"^data\.features\.specs\[0\]\.kind: expected one of"),
        ({"skip": ["row_id"], "defaults": 1}, r"^data\.features\.defaults: unknown key"),
        ({"skip": ["rowid"]}, r"^data\.features\.skip: no column 'rowid' in the data \(columns: row_id, a, click"),
        ({"specs": [{"name": "cost", "kind": "numeric"}]}, r"^data\.features\.specs: no column 'cost'"),
        ({"skip": ["row_id", "a", "b", "price"]}, r"^data\.features: leaves no column a feature \(columns: row_id, a, "
                                                  r"click, b, price; the label, the group and data\.features\.skip"),
    ],
)
def test_bad_shorthands_name_the_key(tmp_path, features, message):
    with pytest.raises(RecipeError, match=message):
        resolve_features(recipe_from_dict(csv_recipe(tmp_path, features)).data)


def test_a_column_of_a_reserved_name_is_one_line_and_reads_under_another(tmp_path):
    """A column named ``__label__`` became a feature of that name, refused by FeatureSpec in a
    ValueError traceback."""
    path = tmp_path / "rows.csv"
    path.write_text("click,__label__,a\n1,x,p\n0,y,q\n")
    raw = csv_recipe(tmp_path, {"default_kind": "categorical"})
    with pytest.raises(RecipeError, match=r"^data\.features: column '__label__' cannot be a feature of that name "
                                          r"\(the encoded data's own column\); add it to data\.features\.skip, or read "
                                          r"it in data\.features\.specs under another name"):
        resolve_features(recipe_from_dict(raw).data)
    raw["data"]["features"]["specs"] = [{"name": "tag", "source": "__label__"}]
    data = resolve_features(recipe_from_dict(raw).data)
    assert [(f.name, f.column) for f in data.features] == [("tag", "__label__"), ("a", "a")]


def test_specs_reading_one_column_are_all_features_and_a_spec_named_as_a_column_is_one_line(tmp_path):
    """Two specs of one column kept the last, the other left out silently; a spec named as
    another column (which becomes a feature too) read "data.features[1].name: duplicate"."""
    specs = [{"name": "price_log", "source": "price", "kind": "numeric", "transform": "log1p"},
             {"name": "price_q", "source": "price", "kind": "numeric", "transform": "quantile"}]
    data = resolve_features(recipe_from_dict(csv_recipe(tmp_path, {"specs": specs, "skip": ["row_id"]})).data)
    assert [f.name for f in data.features] == ["a", "b", "price_log", "price_q"]
    renamed = [{"name": "b", "source": "a"}]
    with pytest.raises(RecipeError, match=r"^data\.features\.specs\[0\]\.name: 'b' is a column of the data too, which "
                                          r"becomes a feature of that name; add 'b' to data\.features\.skip, or name "
                                          r"the spec otherwise$"):
        resolve_features(recipe_from_dict(csv_recipe(tmp_path, {"specs": renamed})).data)


def test_the_shorthand_leaves_out_the_index_pandas_stored_in_a_parquet_file(tmp_path):
    """``df.to_parquet`` of a filtered or shuffled frame stores its index as a column
    ``__index_level_0__``, which became a categorical feature: a row id the model trained on.
    A named index (``set_index("b")``) is data, a feature as before."""
    import pandas as pd

    frame = pd.DataFrame({"click": [1, 0, 1, 0], "a": list("xyzx"), "b": list("pqpq")}).iloc[[3, 1, 0, 2]]
    frame.to_parquet(tmp_path / "rows.parquet")
    raw = csv_recipe(tmp_path, {"default_kind": "categorical"})
    raw["data"].update(dataset="parquet", path=str(tmp_path / "rows.parquet"))
    raw["data"].pop("columns")
    assert [f.name for f in resolve_features(recipe_from_dict(raw).data).features] == ["a", "b"]
    raw["data"]["features"] = {"specs": [{"name": "row", "source": "__index_level_0__"}]}  # named, it is read
    assert [f.name for f in resolve_features(recipe_from_dict(raw).data).features] == ["a", "b", "row"]
    frame.set_index("b").to_parquet(tmp_path / "rows.parquet")  # a named index is a column like any other
    raw["data"]["features"] = {"default_kind": "categorical"}
    assert [f.name for f in resolve_features(recipe_from_dict(raw).data).features] == ["a", "b"]


def test_a_dataset_without_columns_refuses_the_shorthand(tmp_path):
    raw = tiny_recipe(tmp_path, data={"features": {"default_kind": "categorical"}})
    with pytest.raises(RecipeError, match=r"^data\.features\.default_kind: the synthetic dataset cannot list"):
        resolve_features(recipe_from_dict(raw).data)


def test_a_two_seed_run_encodes_its_data_once(tmp_path, monkeypatch):
    encodings = []
    real_run = preprocess._Job.run
    monkeypatch.setattr(preprocess._Job, "run", lambda job, out: (encodings.append(out), real_run(job, out)))
    for seed in (1, 2):
        train(recipe_from_dict({**csv_recipe(tmp_path), "seed": seed}), tmp_path / f"run-{seed}")
    assert len(encodings) == 1 and len(list((tmp_path / "cache" / "data").iterdir())) == 1


def test_the_split_seed_changes_the_entry(tmp_path):
    raw = csv_recipe(tmp_path)
    first = prepare(recipe_from_dict(raw).data, progress=False)
    raw["data"]["split"] = {"seed": 7}
    second = prepare(recipe_from_dict(raw).data, progress=False)
    assert first.root != second.root
    assert first.report["splits"]["valid"]["rows"] != second.report["splits"]["valid"]["rows"] or \
        first.report["splits"]["test"]["rows"] != second.report["splits"]["test"]["rows"]


def test_clean_removes_stale_entries_and_says_why(tmp_path, capsys):
    raw = csv_recipe(tmp_path)
    synthetic = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)  # inputs unchanged: kept
    changed = prepare(recipe_from_dict(raw).data, progress=False)
    cache.release(changed.root)  # read no longer (this process holds what it prepares until it ends)
    with open(raw["data"]["path"], "a") as f:
        f.write("600,a1,0,b1,1.0\n")
    root = changed.root.parent
    old = root / "csv-0123456789abcdef"
    old.mkdir()
    (old / "DONE").write_text("ok\n")
    killed = root / f".csv-fedcba9876543210{cache.TMP_MARK}{2**22 + 12345}-abcd1234"
    killed.mkdir()
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"removed {changed.root.name}" in out and "rows.csv changed" in out
    assert f"removed {old.name}" in out and "older ctr" in out
    assert f"removed {killed.name}" in out and "unfinished" in out
    assert "3 stale entries" in out
    assert sorted(p.name for p in root.iterdir()) == [synthetic.root.name]
    assert os.path.isdir(synthetic.root)
    assert main(["data", "clean", "--dry-run", "--cache-dir", str(tmp_path / "typo")]) == 2  # it said "0 stale"
    assert capsys.readouterr().err.strip() == f"ctr: error: --cache-dir: {tmp_path / 'typo'}: no such folder"


def test_clean_removes_a_file_in_the_cache_folder_and_says_what_it_is(tmp_path, capsys):
    """It said "removed csv-... unfinished (no DONE)" and left the file (rmtree of a file,
    its error ignored), every run again."""
    prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)
    stray = tmp_path / "cache" / "data" / "csv-0123456789abcdef"
    stray.write_text("hi\n")
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "removed csv-0123456789abcdef (0.0 MB): not an entry (a file in the cache folder)" in out
    assert "\n1 stale entry (0.0 MB) in " in out  # it said "1 stale entries"
    assert not stray.exists()
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "0 stale entries" in capsys.readouterr().out
    assert main(["data", "clean", "--cache-dir", str(next((tmp_path / "cache" / "data").iterdir()) / "DONE")]) == 2
    assert capsys.readouterr().err.strip().endswith("/DONE: not a folder")


def test_a_cache_dir_at_a_file_is_one_line_naming_where_it_was_set(tmp_path, capsys, monkeypatch):
    """$CTR_CACHE at a file: clean said "0 stale entries", prepare "<file>/data: not a directory"
    (named by neither the variable nor data.cache_dir)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("CTR_CACHE", str(afile))
    assert main(["data", "clean", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: $CTR_CACHE: {afile}: not a folder"
    raw = tiny_recipe(tmp_path)
    del raw["data"]["cache_dir"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", "prepare", str(tmp_path / "r.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: $CTR_CACHE: {afile}: not a folder"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "data").write_text("")
    for base, wrong in ((afile / "sub", afile), (afile, afile), (tmp_path / "cache", tmp_path / "cache" / "data")):
        assert main(["data", "prepare", str(tmp_path / "r.yaml"), "-o", f"data.cache_dir={base}"]) == 2
        assert capsys.readouterr().err.strip() == f"ctr: error: data.cache_dir: {wrong}: not a folder"
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.strip() == f"ctr: error: --cache-dir: {tmp_path / 'cache' / 'data'}: not a folder"
    monkeypatch.delenv("CTR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".cache").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "ctr").write_text("")
    assert main(["data", "clean"]) == 2
    said = capsys.readouterr().err.strip()
    assert said == ("ctr: error: the default cache (neither $CTR_CACHE nor --cache-dir set): "
                    f"{tmp_path / 'home' / '.cache' / 'ctr'}: not a folder")
    assert afile.read_text() == "" and (tmp_path / "cache" / "data").read_text() == ""


@pytest.mark.parametrize("text", ['{"version": 11, "sour', "[]\n", '{"version": 11, "source": {"files": [["x"]]}}',
                                  '{"version": 11, "source": {"files": ["abc"]}}',
                                  '{"version": 11, "source": {"files": [], "code": 5}}'])
def test_clean_removes_an_entry_whose_key_json_cannot_be_read(tmp_path, capsys, text):
    """A damaged key.json (cut short, or not a mapping) stopped `ctr data clean` in a
    traceback (JSONDecodeError, AttributeError), every entry after it left in place."""
    entry = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)
    cache.release(entry.root)
    (entry.root / "key.json").write_text(text)
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert re.search(rf"^removed {entry.root.name} \(\S+ MB\): its key\.json cannot be read \(damaged\)$",
                     capsys.readouterr().out, re.MULTILINE)
    assert not entry.root.exists()


def test_clean_names_a_file_new_in_an_input_folder(tmp_path, capsys):
    """A file added to a data.path folder made the entry stale as "keyed by an older ctr: its
    recipe keys ... now", as if the entry were an old ctr's: it names the new file. (The entry of a folder of one
    file is that file's, kept: a recipe naming the file reads it.)"""
    raw = csv_recipe(tmp_path)
    folder = tmp_path / "parts"
    folder.mkdir()
    write_csv(folder / "part-0.csv")
    write_csv(folder / "part-1.csv", rows=10)
    raw["data"]["path"] = str(folder)
    entry = prepare(recipe_from_dict(raw).data, progress=False).root
    cache.release(entry)
    write_csv(folder / "part-2.csv", rows=10)
    assert main(["data", "clean", "--dry-run", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"would remove {entry.name} (" in out and f"): input {(folder / 'part-2.csv').resolve()} is new\n" in out


def test_clean_leaves_alone_what_ctr_did_not_name(tmp_path, capsys):
    """With data.cache_dir the project folder, the entries sit beside the data in its data/
    folder: clean removed the raw files ("not an entry") and folders ("no DONE") there, the
    entry's own input too."""
    raw = csv_recipe(tmp_path)
    data = tmp_path / "cache" / "data"
    data.mkdir(parents=True)
    raw["data"]["path"] = str(data / "rows.csv")
    write_csv(data / "rows.csv")
    (data / "raw").mkdir()
    (data / "raw" / "part-0.csv").write_text("click\n1\n")
    (data / "csv-notahexkey00000").mkdir()
    entry = prepare(recipe_from_dict(raw).data, progress=False).root
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "0 stale entries" in capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir()) == sorted([entry.name, "csv-notahexkey00000", "raw", "rows.csv"])
    assert (data / "raw" / "part-0.csv").is_file()


def test_a_run_from_before_the_split_seed_keeps_its_split(tmp_path):
    """Such runs split by the recipe seed: their recipe.yaml (no data.split.seed) loads with it."""
    from ctr.train.rundir import RunDir

    raw = recipe_from_dict({"seed": 7}).to_dict()
    del raw["data"]["split"]["seed"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    assert RunDir(tmp_path).load_recipe().data.split.seed == 7
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe_from_dict({"seed": 7}).to_dict()))
    assert RunDir(tmp_path).load_recipe().data.split.seed == 2024


def test_a_recipe_naming_the_default_label_shares_the_entry(tmp_path):
    """`label: label` (a csv's default) keyed another entry than leaving the label out: the
    same rows were encoded again."""
    (tmp_path / "rows.csv").write_text("label,a\n" + "".join(f"{i % 2},a{i % 7}\n" for i in range(60)))
    raw = {"data": {"dataset": "csv", "path": str(tmp_path / "rows.csv"), "features": [{"name": "a"}],
                    "cache_dir": str(tmp_path / "cache")}}
    default = prepare(recipe_from_dict(raw).data, progress=False).root
    raw["data"]["label"] = "label"
    assert prepare(recipe_from_dict(raw).data, progress=False).root == default


def test_the_same_file_named_from_another_folder_shares_the_entry(tmp_path, monkeypatch):
    """A run's recipe.yaml holds absolute paths: its resume encoded the data again when the
    run began with a relative one."""
    raw = csv_recipe(tmp_path)
    absolute = prepare(recipe_from_dict(raw).data, progress=False)
    monkeypatch.chdir(tmp_path)
    raw["data"]["path"] = "rows.csv"
    assert prepare(recipe_from_dict(raw).data, progress=False).root == absolute.root


def test_an_entry_of_an_earlier_synthetic_generator_is_not_reused_and_is_stale(tmp_path, capsys, monkeypatch):
    """Generator 4 drew every label 0 with ``interacting_pairs: 0`` (its logits were nan); its
    fixed successor kept the version, and so the key: runs read the all-zero entry again."""
    from ctr.datasets.synthetic import SyntheticDataset

    data = recipe_from_dict(tiny_recipe(tmp_path, data={"interacting_pairs": 0})).data
    monkeypatch.setattr(SyntheticDataset, "generator_version", 4)
    old = prepare(data, progress=False)
    cache.release(old.root)
    monkeypatch.undo()
    new = prepare(data, progress=False)
    assert new.root != old.root and 0 < new.report["splits"]["train"]["positive_rate"] < 1
    assert main(["data", "clean", "--dry-run", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert f"would remove {old.root.name}" in out and "synthetic generator version 4 (now 5)" in out, out
    assert new.root.name not in out and "\n1 stale entry (" in out


HOLDER = """
import json, sys
import pyarrow.parquet as pq
from ctr.datasets import prepare
from ctr.recipe import recipe_from_dict
prepared = prepare(recipe_from_dict(json.loads(sys.argv[1])).data, progress=False)
print(prepared.root, flush=True)
sys.stdin.readline()  # reads its rows once the test has cleaned the cache
print(sum(pq.read_table(prepared.split_dir(split)).num_rows for split in ("train", "valid", "test")))
"""


def test_clean_keeps_a_stale_entry_another_process_reads(tmp_path, capsys):
    """An input edited while a run trained made its entry stale, and `ctr data clean` removed
    it under the run, whose next epoch found no shards: a process holds a lease on the entry it
    prepared while it runs; clean keeps such an entry, says which process reads it, drops the
    leases of processes that are gone, and removes the entry once its reader has ended."""
    raw = csv_recipe(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(raw)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    root = Path(holder.stdout.readline().strip())
    with open(raw["data"]["path"], "a") as f:
        f.write("600,a1,0,b1,1.0\n")
    gone = root / "leases" / f"{cache.lease_host()}-{2**22 + 12345}"  # a killed reader's (no exit removed it)
    gone.parent.mkdir(exist_ok=True)
    gone.write_text("")
    cache_dir = str(tmp_path / "cache")
    assert main(["data", "clean", "--dry-run", "--cache-dir", cache_dir]) == 0
    assert f"would keep {root.name} (" in capsys.readouterr().out and gone.exists()
    assert main(["data", "clean", "--cache-dir", cache_dir]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^kept {root.name} \(\S+ MB\): input \S+rows\.csv changed; read by process {holder.pid}$",
                     out, re.MULTILINE), out
    assert "\n0 stale entries (0.0 MB) in " in out and out.endswith("; 1 more kept while a running process reads it\n")
    assert not gone.exists() and (root / "DONE").exists()
    rows, _ = holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and int(rows) == sum(s["rows"] for s in json.loads(
        (root / "report.json").read_text())["splits"].values())
    assert list((root / "leases").iterdir()) == []  # its exit removed its lease
    assert main(["data", "clean", "--cache-dir", cache_dir]) == 0
    assert f"removed {root.name} (" in capsys.readouterr().out and not root.exists()


def test_clean_keeps_an_entry_a_process_on_another_host_holds(tmp_path, capsys):
    """A cache folder shared by hosts: a lease of another host's process cannot be checked from
    here, and the entry is kept, naming the host and the lease to delete once that process has
    ended; this process's own lease holds until released."""
    entry = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False).root
    (entry / "key.json").write_text("[]\n")
    (entry / "leases" / "otherhost@4026531836-7").write_text("")  # another host's namespace is no news
    cache_dir = str(tmp_path / "cache")
    assert main(["data", "clean", "--cache-dir", cache_dir]) == 0
    said = re.search(rf"^kept {entry.name} \(\S+ MB\): its key\.json cannot be read \(damaged\); read by (.+)$",
                     capsys.readouterr().out, re.MULTILINE)
    other = f"process 7 on host otherhost (delete {entry / 'leases' / 'otherhost@4026531836-7'} once it has ended)"
    assert said and sorted(said[1].split(", ")) == sorted([other, f"process {os.getpid()}"])
    cache.release(entry)
    assert main(["data", "clean", "--cache-dir", cache_dir]) == 0
    assert f"kept {entry.name} (" in capsys.readouterr().out and entry.is_dir()


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="no /proc: a lease names the hostname alone")
def test_clean_keeps_an_entry_a_process_of_another_pid_namespace_holds(tmp_path, capsys):
    """A container sharing the host's hostname (docker --network host, k8s hostNetwork) numbers
    its processes in its own pid namespace: clean checked its lease's pid in its own, found it
    gone, dropped the lease and removed the entry under the training. A lease names the pid
    namespace beside the hostname; another namespace's is kept, as another host's."""
    entry = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False).root
    here = f"{socket.gethostname()}@{os.stat('/proc/self/ns/pid').st_ino}"
    assert [lease.name for lease in (entry / "leases").iterdir()] == [f"{here}-{os.getpid()}"]
    cache.release(entry)
    (entry / "key.json").write_text("[]\n")
    other = entry / "leases" / f"{socket.gethostname()}@1-{2**22 + 12345}"  # its pid is none of this namespace's
    other.write_text("")
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    reader = f"process {2**22 + 12345} on host {socket.gethostname()} in pid namespace 1 (delete {other} once it has"
    assert f"kept {entry.name} (" in out and f"read by {reader} ended)" in out
    assert other.exists() and (entry / "DONE").exists()


def test_clean_renames_an_entry_away_before_it_deletes_its_files(tmp_path, capsys, monkeypatch):
    """Clean deleted an entry's files in place: a reader on another NFS client (where the lock
    may hold nothing) found its DONE and read a half-deleted entry. The entry leaves its name in
    one step, as a temporary folder a later clean removes were this one stopped."""
    entry = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False).root
    cache.release(entry)
    (entry / "key.json").write_text("[]\n")
    deleted, rmtree = [], cache.shutil.rmtree
    monkeypatch.setattr(cache.shutil, "rmtree", lambda path: (deleted.append((path, entry.exists())), rmtree(path)))
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"removed {entry.name} (" in capsys.readouterr().out and not entry.exists()
    [(path, named)] = deleted
    assert not named and path.parent == entry.parent and cache.ENTRY_NAME.fullmatch(path.name)
    assert path.name.startswith(f".{entry.name}{cache.TMP_MARK}{os.getpid()}-") and not path.exists()


def test_clean_on_another_host_keeps_a_preparation_in_progress(tmp_path, capsys, monkeypatch):
    """A clean on another host cannot see the preparing process, so it took the temporary
    folder for a stopped preparation's and removed it under the encoding: the preparation's
    lease is written as the folder is made."""
    kept = []

    class CleanedElsewhere(preprocess.ShardWriter):  # the first split's writer: the folder is made
        def __init__(self, folder, *args):
            super().__init__(folder, *args)
            if not kept:
                with monkeypatch.context() as elsewhere:
                    elsewhere.setattr(cache, "lease_host", lambda: "otherhost")
                    elsewhere.setattr(cache, "process_alive", lambda pid: False)
                    main(["data", "clean", "--cache-dir", str(tmp_path / "cache")])
                kept.append(folder.is_dir())

    monkeypatch.setattr(preprocess, "ShardWriter", CleanedElsewhere)
    prepared = prepare(recipe_from_dict(tiny_recipe(tmp_path)).data, progress=False)
    assert kept == [True] and (prepared.root / "DONE").exists()
    reader = f"process {os.getpid()} on host {socket.gethostname()}"
    assert re.search(rf"^kept \.{prepared.root.name}\.tmp-{os.getpid()}-[0-9a-f]{{8}} \(\S+ MB\): unfinished \(no "
                     rf"process of this host prepares it\); read by {reader}", capsys.readouterr().out, re.MULTILINE)


def test_a_lease_that_cannot_be_written_warns_unless_the_folder_is_not_this_users(tmp_path, caplog, monkeypatch):
    """Every error writing a lease was logged at DEBUG: a full disk or a file in the way left
    the entry unheld without a word, for a clean to remove under the process."""
    (tmp_path / "leases").write_text("")  # a file where the leases' folder goes
    with caplog.at_level("DEBUG", logger="ctr.datasets.cache"):
        cache.write_lease(tmp_path)
    assert [(r.levelname, r.getMessage().startswith(f"{tmp_path}: no lease taken")) for r in caplog.records] == [
        ("WARNING", True)]
    caplog.clear()
    (tmp_path / "leases").unlink()
    monkeypatch.setattr(Path, "touch", lambda *args, **kwargs: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with caplog.at_level("DEBUG", logger="ctr.datasets.cache"):
        cache.write_lease(tmp_path)  # another user's cache
    assert [r.levelname for r in caplog.records] == ["DEBUG"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_a_ctr_train_that_ends_leaves_no_lease_on_the_entry_it_read(tmp_path, devices):
    """``ctr`` ends by ``os._exit`` once torch is loaded (each rank too), which runs no atexit
    handler: each training left its leases on its entry, never pruned while it was current."""
    raw = tiny_recipe(tmp_path, train={"epochs": 1}, trainer={"progress_bar": False, "devices": devices})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "ctr", "train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    entry = prepare(recipe_from_dict(raw).data, progress=False).root
    cache.release(entry)
    assert list((entry / cache.LEASES).iterdir()) == []
