"""What the encoded-data cache key holds: every recipe key the encoded rows depend on, and no
key they do not depend on in that recipe (two recipes differing only there share an entry)."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctr.cli import main
from ctr.datasets import cache, fit, prepare, preprocess
from ctr.datasets.avazu import CATEGORICAL
from ctr.datasets.source import resolve_features
from ctr.errors import RecipeError, scoring_a_saved_run
from ctr.recipe import recipe_from_dict
from ctr.typed import to_plain
from tests.conftest import tiny_recipe
from tests.datasets.test_amazon import write_amazon
from tests.datasets.test_movielens import write_movielens

OTHER_SPLIT = {"valid": 0.3, "test": 0.2, "seed": 7}


@pytest.fixture
def encodings(monkeypatch):
    """The folders each preparation encoded into (one per encode, none for an entry found)."""
    done = []
    real_run = preprocess._Job.run
    monkeypatch.setattr(preprocess._Job, "run", lambda job, out: (done.append(out), real_run(job, out)))
    return done


def write_rows(path, form: str, rows: int):
    """``rows`` rows of a label ``y``, a categorical ``a`` and a number ``n`` in ``form`` (the
    file as it is when written before: its stamp is in the key)."""
    if path.exists():
        return path
    labels, tokens, numbers = [i % 2 for i in range(rows)], [f"v{i % 5}" for i in range(rows)], list(range(rows))
    if form == "parquet":
        pq.write_table(pa.table({"y": labels, "a": tokens, "n": numbers}), path)
    elif form == "libsvm":
        path.write_text("".join(f"{y} 1:{i % 5}:1 2:0:{n}\n" for i, (y, n) in enumerate(zip(labels, numbers))))
    else:
        path.write_text("y,a,n\n" + "".join(f"{y},{a},{n}\n" for y, a, n in zip(labels, tokens, numbers)))
    return path


def file_data(tmp_path, form: str, held_out=("valid", "test"), split=None, numeric="log1p"):
    """A ``data`` block of dataset ``form`` (csv, parquet, libsvm) reading 40 training rows,
    with a file of its own for each split of ``held_out``."""
    suffix = {"libsvm": "txt"}.get(form, form)
    data = {"dataset": form, "path": str(write_rows(tmp_path / f"train.{suffix}", form, 40)),
            "cache_dir": str(tmp_path / "cache"), "split": split or {}}
    for split_name in held_out:
        data[f"{split_name}_path"] = str(write_rows(tmp_path / f"{split_name}.{suffix}", form, 7))
    if form == "libsvm":
        data["features"] = [{"name": "a", "source": "1"}, {"name": "n", "source": "2", "kind": "numeric",
                                                             "transform": numeric}]
    else:
        data.update(label="y", features=[{"name": "a"}, {"name": "n", "kind": "numeric", "transform": numeric}])
    return data


def entry(data: dict):
    return prepare(recipe_from_dict({"data": data}).data, progress=False)


@pytest.mark.parametrize("form", ["csv", "parquet", "libsvm"])
def test_split_keys_of_a_dataset_given_both_held_out_files_key_no_other_entry(tmp_path, form, encodings):
    """With ``valid_path`` and ``test_path`` no row is split off: ``data.split`` was in the key all
    the same, and a recipe differing only there encoded the same rows again."""
    first = entry(file_data(tmp_path, form))
    second = entry(file_data(tmp_path, form, split=OTHER_SPLIT))
    assert second.root == first.root and len(encodings) == 1
    assert [first.report["splits"][s]["rows"] for s in ("train", "valid", "test")] == [40, 7, 7]


@pytest.mark.parametrize("given, carved", [("test", "valid"), ("valid", "test")])
def test_a_carved_split_keys_its_fraction_and_the_seed_and_not_the_other_fraction(tmp_path, given, carved, encodings):
    first = entry(file_data(tmp_path, "csv", held_out=[given]))
    assert entry(file_data(tmp_path, "csv", held_out=[given], split={given: 0.3})).root == first.root
    assert len(encodings) == 1
    for changed in ({carved: 0.3}, {"seed": 7}):
        other = entry(file_data(tmp_path, "csv", held_out=[given], split=changed))
        assert other.root != first.root, changed
    assert len(encodings) == 3


def test_the_seed_of_a_split_of_no_rows_keys_no_other_entry(tmp_path, encodings):
    first = entry(file_data(tmp_path, "csv", held_out=["valid"], split={"test": 0.0}))
    assert entry(file_data(tmp_path, "csv", held_out=["valid"], split={"test": 0.0, "seed": 7})).root == first.root
    assert len(encodings) == 1 and first.report["splits"]["test"]["rows"] == 0


def test_the_split_seed_stays_in_the_key_where_quantile_boundaries_are_fitted_on_a_sample(tmp_path, monkeypatch):
    """No row is split off, but the seed draws the sample a quantile transform's boundaries
    are fitted on: two seeds encode other values."""
    monkeypatch.setattr(fit, "RESERVOIR", 10)
    first = entry(file_data(tmp_path, "csv", numeric="quantile"))
    second = entry(file_data(tmp_path, "csv", numeric="quantile", split={"seed": 7}))
    assert second.root != first.root
    assert first.schema.feature("n").numeric.boundaries != second.schema.feature("n").numeric.boundaries


def test_clean_keeps_an_entry_whose_split_seed_a_quantile_transform_keys(tmp_path, capsys):
    """The source reads no split key (both held-out files), the quantile fit reads the seed:
    the entry's key holds seed 7, its source options the default. clean rebuilt the key
    from the options and removed the entry that recipe reads as keyed by an older ctr."""
    kept = entry(file_data(tmp_path, "csv", numeric="quantile", split={"seed": 7}))
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "0 stale entries" in capsys.readouterr().out and kept.root.is_dir()
    assert entry(file_data(tmp_path, "csv", numeric="quantile", split={"seed": 7})).root == kept.root


def test_clean_keeps_a_folder_whose_name_has_no_dataset_part(tmp_path, capsys):
    """A finished-looking folder named without ``<dataset>-<key>`` in the cache: clean's
    re-key check raised ValueError (a traceback) unpacking its name."""
    kept = entry(file_data(tmp_path, "csv"))
    odd = kept.root.with_name("nodash")
    shutil.copytree(kept.root, odd)
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert odd.is_dir() and kept.root.is_dir()


def write_ipinyou(folder):
    folder.mkdir()
    (folder / "featindex.fm.txt").write_text("weekday:1\t0\nweekday:2\t1\nhour:5\t2\nhour:6\t3\n")
    (folder / "train.fm.txt").write_text("".join(f"{i % 2} {i % 2}:1 {2 + i % 3 // 2}:1\n" for i in range(40)))
    (folder / "test.fm.txt").write_text("1 0:1 3:1\n0 1:1 2:1\n0 1:1 3:1\n")
    return folder


def test_ipinyou_keys_the_validation_fraction_and_seed_and_not_the_test_fraction(tmp_path, encodings):
    """The release's test file is the test split: ``data.split.test`` splits nothing off."""
    data = {"dataset": "ipinyou", "path": str(write_ipinyou(tmp_path / "release")), "cache_dir": str(tmp_path / "c")}
    first = entry(data)
    assert entry({**data, "split": {"test": 0.3}}).root == first.root
    assert len(encodings) == 1 and first.report["splits"]["test"]["rows"] == 3
    assert entry({**data, "split": {"valid": 0.3}}).root != first.root
    assert entry({**data, "split": {"seed": 7}}).root != first.root


def test_amazon_keys_its_own_seed_and_not_the_split_seed(tmp_path, encodings):
    """Amazon splits each user's items itself and samples negatives by ``data.seed``:
    ``data.split.seed`` chose no row."""
    data = {"dataset": "amazon", "path": str(write_amazon(tmp_path / "am")), "cache_dir": str(tmp_path / "c")}
    first = entry(data)
    assert entry({**data, "split": {"seed": 7}}).root == first.root
    assert len(encodings) == 1
    assert entry({**data, "seed": 7}).root != first.root


def test_a_recipe_whose_every_split_key_is_read_keys_the_entry_it_keyed_before(tmp_path):
    """Entries written before unread keys left the key keep theirs: the whole ``data.split`` in
    the key and in the source's options."""
    data = file_data(tmp_path, "csv", held_out=[], split=OTHER_SPLIT)
    prepared = entry(data)
    inputs = json.loads((prepared.root / "key.json").read_text())
    split = to_plain(resolve_features(recipe_from_dict({"data": data}).data).split)
    assert inputs["split"] == split == inputs["source"]["options"]["split"] == OTHER_SPLIT


@pytest.mark.parametrize("dataset, key, value, instead", [
    ("criteo", "numeric_transform", "standardize", "the transform of I1..I13"),
    ("criteo", "min_count", 2, "min_count on each feature"), ("avazu", "min_count", 2, "min_count on each feature"),
    ("amazon", "pooling", "mean", "the pooling of hist_item_id and hist_cat_id"),
    ("synthetic", "integer_ids", True, "num_ids on C1..C26"),
])
def test_an_option_of_the_default_features_is_refused_where_the_recipe_lists_its_own(
        tmp_path, dataset, key, value, instead, encodings):
    """Such an option was silently unread (a recipe listing its features and setting
    ``min_count: 10`` counted every token). A run an earlier ctr trained so is scored as it
    was: on the entry of the recipe without it."""
    data = {**_listed_features(tmp_path, dataset), "cache_dir": str(tmp_path / "c")}
    first = entry(data)
    with pytest.raises(RecipeError, match=rf"^data\.{key}: {value!r} builds the default features only, which "
                                          rf"data\.features replaces; set {instead} in data\.features instead$"):
        entry({**data, key: value})
    with scoring_a_saved_run():
        assert entry({**data, key: value}).root == first.root
    assert len(encodings) == 1
    defaults = {name: value for name, value in data.items() if name != "features"}
    assert entry({**defaults, key: value}).root != entry(defaults).root


def _listed_features(tmp_path, dataset: str) -> dict:
    """A ``data`` block of ``dataset`` over a few rows, listing its features."""
    if dataset == "amazon":
        return {"dataset": "amazon", "path": str(write_amazon(tmp_path / "am")),
                "features": [{"name": "user_id"}, {"name": "item_id"}]}
    if dataset == "synthetic":
        return {**tiny_recipe(tmp_path)["data"], "features": [{"name": "C1"}, {"name": "I1", "kind": "numeric"}]}
    path = tmp_path / "rows"
    if dataset == "criteo":
        path.write_text("".join(f"{i % 2}\t{i}" + "\t" * 12 + f"\t{i % 3:08x}" + "\t" * 25 + "\n" for i in range(30)))
        return {"dataset": "criteo", "path": str(path), "features": [{"name": "C1"}]}
    hours = "".join(f"{i},{i % 2},141021{i % 24:02d}," + ",".join([f"x{i % 3}"] * len(CATEGORICAL)) + "\n"
                    for i in range(30))
    path.write_text(",".join(["id", "click", "hour", *CATEGORICAL]) + "\n" + hours)
    return {"dataset": "avazu", "path": str(path), "features": [{"name": "C1"}]}


def test_clean_removes_an_entry_keyed_by_a_key_its_rows_do_not_depend_on_and_keeps_the_one_read_now(
        tmp_path, capsys):
    """An older ctr keyed such an entry by the whole ``data.split``: no recipe reads it again."""
    prepared = entry(file_data(tmp_path, "csv", split=OTHER_SPLIT))
    inputs = json.loads((prepared.root / "key.json").read_text())
    assert inputs["split"] != OTHER_SPLIT  # keyed at the defaults
    inputs["split"] = inputs["source"]["options"]["split"] = OTHER_SPLIT
    assert "1 stale entry" in cleaned_of_an_older_key(prepared, inputs, tmp_path / "cache", capsys)


def cleaned_of_an_older_key(prepared, inputs, cache_dir, capsys) -> str:
    """``ctr data clean``'s output after a copy of entry ``prepared`` keyed by ``inputs`` (as an
    older ctr keyed it) was put beside it; asserts the copy alone was removed, and why."""
    old = prepared.root.with_name(f"{prepared.root.name.rsplit('-', 1)[0]}-{cache.cache_key(inputs)[:16]}")
    shutil.copytree(prepared.root, old, ignore=shutil.ignore_patterns(cache.LEASES))  # no process reads the copy
    (old / "key.json").write_text(cache.key_blob(inputs) + "\n")
    assert main(["data", "clean", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert f"removed {old.name}" in out and f"keyed by an older ctr: its recipe keys {prepared.root.name} now" in out
    assert sorted(p.name for p in old.parent.iterdir()) == [prepared.root.name]
    return out


@pytest.mark.parametrize("dataset, options", [
    ("criteo", {}), ("criteo", {"numeric_transform": "log_square", "min_count": 2}), ("avazu", {"min_count": 2}),
    ("amazon", {"pooling": "mean"}), ("synthetic", {"integer_ids": True}), ("ipinyou", {}), ("movielens", {}),
])
def test_a_recipe_listing_the_default_features_shares_the_entry_of_one_leaving_them_out(
        tmp_path, dataset, options, encodings):
    """The same features built by the dataset or written out (the options that build them at
    their defaults, ``source`` naming a feature's own column) keyed two entries: the same rows
    were encoded twice. A listed feature off the defaults keys another entry."""
    omitted = _omitted_features(tmp_path, dataset, options)
    first = entry(omitted)
    specs = [info["spec"] for info in to_plain(first.schema.features)]
    features = [{**spec, "source": spec["source"] or spec["name"]} for spec in specs]
    listed = {**{key: value for key, value in omitted.items() if key not in options}, "features": features}
    assert entry(listed).root == first.root and len(encodings) == 1
    first_sparse = next(i for i, spec in enumerate(features) if spec["kind"] != "numeric")  # one reading oov_buckets
    features[first_sparse] = {**features[first_sparse], "oov_buckets": 3}
    assert entry(listed).root != first.root and len(encodings) == 2


def _omitted_features(tmp_path, dataset: str, options: dict) -> dict:
    """A ``data`` block of ``dataset`` over a few rows, with ``options``, leaving the features out."""
    if dataset == "ipinyou":
        release = write_ipinyou(tmp_path / "release")
        return {"dataset": "ipinyou", "path": str(release), "cache_dir": str(tmp_path / "c")}
    if dataset == "movielens":
        ratings = [(1 + k % 2, 10 * (1 + k % 2), 5 if k % 3 else 1) for k in range(40)]
        return {"dataset": "movielens", "path": str(write_movielens(tmp_path / "ml", ratings)),
                "cache_dir": str(tmp_path / "c")}
    data = {**_listed_features(tmp_path, dataset), "cache_dir": str(tmp_path / "c"), **options}
    del data["features"]
    return data


def test_a_source_naming_the_features_own_column_shares_the_entry_of_one_leaving_it_out(tmp_path, encodings):
    data = file_data(tmp_path, "csv")
    first = entry(data)
    named = [{**spec, "source": spec["name"]} for spec in data["features"]]
    assert entry({**data, "features": named}).root == first.root and len(encodings) == 1
    assert entry({**data, "features": [{"name": "a", "source": "n"}, named[1]]}).root != first.root


def test_a_libsvm_recipe_listing_the_fields_sniffed_keys_its_own_entry(tmp_path, encodings):
    """Without a featindex the default features make a training row of a field the first rows
    lack a bad row, where the same features listed read it: the rows may be read otherwise."""
    (tmp_path / "rows.txt").write_text("".join(f"{i % 2} 1:{i % 5}:1 2:{5 + i % 3}:1\n" for i in range(40)))
    data = {"dataset": "libsvm", "path": str(tmp_path / "rows.txt"), "cache_dir": str(tmp_path / "c")}
    first = entry(data)
    specs = [info["spec"] for info in to_plain(first.schema.features)]
    assert entry({**data, "features": specs}).root != first.root and len(encodings) == 2


def test_clean_removes_an_entry_an_older_ctr_keyed_by_the_default_features_listed(tmp_path, capsys):
    """Its recipe keys the entry of the recipe leaving the features out now."""
    omitted = _omitted_features(tmp_path, "criteo", {})
    prepared = entry(omitted)
    inputs = json.loads((prepared.root / "key.json").read_text())
    inputs["source"]["options"]["features"] = inputs["features"]
    cleaned_of_an_older_key(prepared, inputs, tmp_path / "c", capsys)


@pytest.mark.parametrize("spelling", [{"columns": "auto"}, {"columns": ["y", "a", "n"]}, {"valid_path": ""},
                                      {"test_path": ""}])
def test_a_csv_recipe_spelling_out_what_it_reads_anyway_shares_the_entry(tmp_path, spelling, encodings):
    """``columns: auto`` (or the header's own names) and an empty path keyed other entries than
    leaving them out: the same rows were encoded again. Other names for the columns key anew."""
    data = file_data(tmp_path, "csv", held_out=[])
    first = entry(data)
    assert entry({**data, **spelling}).root == first.root and len(encodings) == 1
    renamed = {**data, "columns": ["y", "n", "a"], "features": [{"name": "a"}, {"name": "n"}]}
    assert entry(renamed).root != entry({**data, "features": renamed["features"]}).root


@pytest.mark.parametrize("layout", ["dac", "kaggle"])
def test_a_criteo_format_named_as_detected_shares_the_entry_of_auto(tmp_path, layout, encodings):
    """``format: dac`` on files that ``auto`` reads as DAC keyed another entry than ``auto``."""
    data = _omitted_features(tmp_path, "criteo", {})
    if layout == "kaggle":
        fields = ",".join(["Id", "Label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))])
        Path(data["path"]).write_text(fields + "\n" + "".join(f"{i},{i % 2},{i}" + "," * 12 + f",{i % 3:08x}"
                                                              + "," * 25 + "\n" for i in range(30)))
    first = entry(data)
    assert entry({**data, "format": layout}).root == first.root and len(encodings) == 1


@pytest.mark.parametrize("form", ["csv", "parquet", "libsvm"])
def test_a_folder_of_one_file_shares_the_entry_of_that_file(tmp_path, form, encodings):
    """``data.path: rows/`` reads the one file ``rows/train.csv`` as naming that file does: the
    key held the folder's path and the file's, two entries of the same rows. A folder of two
    files keys its own."""
    data = file_data(tmp_path, form)
    folder = tmp_path / "rows"
    folder.mkdir()
    moved = Path(data["path"]).rename(folder / Path(data["path"]).name)
    first = entry({**data, "path": str(moved)})
    assert entry({**data, "path": str(folder)}).root == first.root and len(encodings) == 1
    write_rows(folder / f"more{moved.suffix}", form, 9)
    assert entry({**data, "path": str(folder)}).root != first.root and len(encodings) == 2
    cache.release(first.root)
    assert not [stale.path for stale in cache.stale_entries(first.root.parent)]  # the file's recipe reads it still


@pytest.mark.parametrize("unread", [
    {"name": "a", "num_buckets": 7}, {"name": "a", "max_len": 9, "splitter": "|", "fill": 3.0, "pooling": "sum"},
    {"name": "n", "kind": "numeric", "transform": "log1p", "num_buckets": 7, "min_count": 3, "max_vocab": 4,
     "oov_buckets": 2, "max_len": 9, "splitter": "|", "pooling": "sum"},
])
def test_a_feature_option_its_kind_never_reads_keys_no_other_entry(tmp_path, unread, encodings):
    """A bucketing option on a categorical feature (or a vocabulary option on a numeric one)
    changed the key: the same rows were encoded again. An option the kind reads keys anew."""
    data = file_data(tmp_path, "csv")
    first = entry(data)
    features = [unread if spec["name"] == unread["name"] else spec for spec in data["features"]]
    assert entry({**data, "features": features}).root == first.root and len(encodings) == 1
    read = {"name": "a", "min_count": 3} if unread["name"] == "a" else {**data["features"][1], "fill": 3.0}
    features = [read if spec["name"] == read["name"] else spec for spec in data["features"]]
    assert entry({**data, "features": features}).root != first.root and len(encodings) == 2


def test_clean_removes_an_entry_an_older_ctr_keyed_by_an_option_its_feature_never_reads(tmp_path, capsys):
    prepared = entry(file_data(tmp_path, "csv"))
    inputs = json.loads((prepared.root / "key.json").read_text())
    inputs["features"][0]["num_buckets"] = 7  # of categorical a
    cleaned_of_an_older_key(prepared, inputs, tmp_path / "cache", capsys)


@pytest.mark.parametrize("written", [{"on_bad_rows": "error"}, {"quoting": True}, {"header": True, "delimiter": ","}])
def test_a_csv_option_written_out_at_its_default_shares_the_entry(tmp_path, written, encodings):
    data = file_data(tmp_path, "csv", held_out=[])
    first = entry(data)
    assert entry({**data, **written}).root == first.root and len(encodings) == 1


@pytest.mark.parametrize("key, spelling", [("on_bad_rows", "Skip"), ("on_bad_rows", "drop"), ("quoting", "yes")])
def test_another_spelling_of_a_csv_option_is_refused_naming_its_key(tmp_path, key, spelling):
    """Not read as the value it resembles: no spelling keys an entry of its own."""
    with pytest.raises(RecipeError, match=rf"^data\.{key}: expected "):
        recipe_from_dict({"data": {**file_data(tmp_path, "csv", held_out=[]), key: spelling}})


def test_share_with_on_a_numeric_feature_is_refused_naming_the_key(tmp_path):
    """A numeric feature has no table to share: share_with was ignored (its row check read the
    column as a num_ids table's ids where it named one), and it keyed an entry of its own."""
    data = file_data(tmp_path, "csv")
    data["features"][1] = {**data["features"][1], "share_with": "a"}
    with pytest.raises(RecipeError, match=r"^data\.features\[1\]\.share_with: 'n' is a numeric feature"):
        entry(data)


def test_clean_removes_an_entry_an_older_ctr_keyed_with_share_with_on_a_numeric_feature(tmp_path, capsys):
    """An older ctr took ``share_with`` on a numeric feature (it was ignored); no recipe does now,
    yet its entry rebuilt to its own key, so clean never found it stale."""
    prepared = entry(file_data(tmp_path, "csv"))
    inputs = json.loads((prepared.root / "key.json").read_text())
    inputs["features"][1]["share_with"] = "a"  # of numeric n
    old = prepared.root.with_name(f"csv-{cache.cache_key(inputs)[:16]}")
    shutil.copytree(prepared.root, old, ignore=shutil.ignore_patterns(cache.LEASES))
    (old / "key.json").write_text(cache.key_blob(inputs) + "\n")
    assert main(["data", "clean", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (f"removed {old.name} (0.0 MB): keyed by an older ctr: data.features[1].share_with on numeric feature 'n', "
            "which no recipe takes now\n") in capsys.readouterr().out
    assert sorted(p.name for p in old.parent.iterdir()) == [prepared.root.name]


@pytest.mark.parametrize("unread, read", [
    ({"fill": 3.0}, {"max_len": 2}),  # of sequence a
    ({"min_count": 3, "max_vocab": 4}, {"num_ids": 50}),  # of num_ids n (no vocabulary counted)
], ids=["sequence-fill", "num-ids-vocabulary"])
def test_a_sequence_fill_and_a_num_ids_vocabulary_option_key_at_their_defaults(tmp_path, unread, read, encodings):
    """A sequence's ``fill`` and a ``num_ids`` feature's ``min_count`` and ``max_vocab`` are read by
    nothing: a recipe differing only there shares the entry; an option the kind reads keys anew."""
    data = {**file_data(tmp_path, "csv"), "features": [{"name": "a", "kind": "sequence", "splitter": "|"},
                                                       {"name": "n", "num_ids": 40}]}
    first = entry(data)
    which = 0 if "fill" in unread else 1

    def changed(options):
        return {**data, "features": [{**spec, **options} if i == which else spec
                                     for i, spec in enumerate(data["features"])]}

    assert entry(changed(unread)).root == first.root and len(encodings) == 1
    assert entry(changed(read)).root != first.root and len(encodings) == 2
