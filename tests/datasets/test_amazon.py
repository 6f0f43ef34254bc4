import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctr.datasets import prepare
from ctr.datasets.amazon import AmazonConfig, AmazonDataset, read_histories, targets
from ctr.errors import DataError
from ctr.recipe import recipe_from_dict
from tests.conftest import SHARED_DATA

HISTORIES = "u1 a b c d e\nu2 f g h\nu3 a f\nu4 g h i j k l\n"
ATTRIBUTES = {"a": [1, 2], "b": [3], "c": [1], "d": [4], "e": [5], "f": [6], "g": [7], "h": [8], "i": [9], "j": [9]}


def write_amazon(folder, histories=HISTORIES):
    folder.mkdir(exist_ok=True)
    (folder / "Toy.txt").write_text(histories)
    (folder / "Toy_item2attributes.json").write_text(json.dumps(ATTRIBUTES))
    return folder / "Toy.txt"


def rows(path, split, **options):
    source = AmazonDataset(AmazonConfig(path=str(path), **options))
    return pa.Table.from_batches(list(source.streams()[split]())).to_pydict()


def test_each_prefix_predicts_next_item_and_a_sampled_negative(tmp_path):
    path = write_amazon(tmp_path / "am")
    train = rows(path, "train")
    u1 = [i for i, u in enumerate(train["user_id"]) if u == "u1"]
    assert [train["label"][i] for i in u1] == [1, 0, 1, 0]
    assert [train["item_id"][i] for i in u1[::2]] == ["b", "c"]
    assert [train["hist_item_id"][i] for i in u1] == [["a"], ["a"], ["a", "b"], ["a", "b"]]
    touched = set("abcde")
    assert all(train["item_id"][i] not in touched for i in u1[1::2])
    assert [train["cat_id"][i] for i in u1[::2]] == ["3", "1"]  # the first attribute
    assert train["hist_cat_id"][u1[2]] == ["1", "3"]


def test_last_item_is_test_second_last_is_valid(tmp_path):
    path = write_amazon(tmp_path / "am")
    test, valid = rows(path, "test"), rows(path, "valid")
    assert sorted(zip(test["user_id"][::2], test["item_id"][::2])) == [("u1", "e"), ("u2", "h"), ("u3", "f"), ("u4", "l")]
    assert sorted(zip(valid["user_id"][::2], valid["item_id"][::2])) == [("u1", "d"), ("u2", "g"), ("u4", "k")]
    assert test["hist_item_id"][0] == ["a", "b", "c", "d"]
    assert valid["cat_id"][valid["item_id"].index("k")] == "<none>"  # k has no attributes


def test_negatives_deterministic_by_seed_and_history_cut_to_max_len(tmp_path):
    path = write_amazon(tmp_path / "am")
    first, again, other = rows(path, "train", seed=1), rows(path, "train", seed=1), rows(path, "train", seed=2)
    assert first == again and first["item_id"] != other["item_id"]
    cut = rows(path, "test", max_len=2)
    assert cut["hist_item_id"][0] == ["c", "d"]


def test_default_features_share_tables_and_keep_positions(tmp_path):
    source = AmazonDataset(AmazonConfig(path=str(write_amazon(tmp_path / "am"))))
    hist = {f.name: f for f in source.default_features()}
    assert hist["hist_item_id"].share_with == "item_id" and hist["hist_cat_id"].share_with == "cat_id"
    assert hist["hist_item_id"].pooling == "none"
    mean = AmazonDataset(AmazonConfig(path=str(tmp_path / "am" / "Toy.txt"), pooling="mean")).default_features()
    assert mean[3].pooling == "mean"


def test_prepared_din_rows_and_group(tmp_path):
    raw = {"data": {"dataset": "amazon", "path": str(write_amazon(tmp_path / "am")), "cache_dir": str(tmp_path / "c")}}
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    assert [prepared.report["splits"][s]["rows"] for s in ("train", "valid", "test")] == [2 * (2 + 0 + 0 + 3), 6, 8]
    assert prepared.schema.group == "user_id"
    assert prepared.schema.feature("hist_item_id").table == "item_id"


def test_user_without_items_names_its_line_or_is_skipped(tmp_path):
    path = write_amazon(tmp_path / "am", HISTORIES + "u5\n")
    raw = {"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c")}}
    recipe = recipe_from_dict(raw)
    with pytest.raises(DataError, match=r"Toy\.txt:5: a user without items"):
        prepare(recipe.data, progress=False)
    raw["data"]["on_bad_rows"] = "skip"
    recipe = recipe_from_dict(raw)
    assert prepare(recipe.data, progress=False).report["splits"]["train"]["skipped_bad_rows"] == 1


@pytest.mark.parametrize("on_bad_rows", ["error", "skip"])
def test_a_user_on_two_lines_names_both_lines(tmp_path, on_bad_rows):
    """The format gives each user one line: u1's second line was read as another user of the
    same id, with its own targets, and negatives sampled among the items of its other line."""
    path = write_amazon(tmp_path / "am", HISTORIES + "u1 g h i\n")
    raw = {"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c"), "on_bad_rows": on_bad_rows}}
    with pytest.raises(DataError, match=rf"^{path}:5: user u1 is on line 1 too; give each user one line \(items in "
                                        r"time order\)$"):
        prepare(recipe_from_dict(raw).data, progress=False)


@pytest.mark.parametrize("lines, on_bad_rows, first", [
    (["u5", "u1 g h i"], "error", r"5: a user without items"),
    (["u5", "u1 g h i"], "skip", r"6: user u1 is on line 1 too"),
    (["u5", "u6 a\rb c"], "error", r"5: a user without items"),
    (["u5", "u6 a\rb c"], "skip", r"6: a carriage return"),
    (["u6 a b c d e f g h i j k l", "u5"], "error", r"5: user u6 has touched every item"),
])
def test_bad_lines_are_named_in_file_order(tmp_path, lines, on_bad_rows, first):
    """A user on two lines (or a ``\\r`` inside a line) was refused before the bad rows of the
    lines above it were reported, and a user who touched every item after the bad rows below
    it: the first bad line of the file is the one named (bad rows skipped: the next)."""
    path = write_amazon(tmp_path / "am", HISTORIES + "\n".join(lines) + "\n")
    raw = {"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c"), "on_bad_rows": on_bad_rows}}
    with pytest.raises(DataError, match=rf"^{path}:{first}"):
        prepare(recipe_from_dict(raw).data, progress=False)


def test_a_line_that_is_not_utf8_is_a_bad_row_and_a_byte_order_mark_is_dropped(tmp_path):
    """A Latin-1 ``é`` was read as U+FFFD, silently one id with every other undecodable one;
    a byte order mark was part of the first user's name."""
    path = write_amazon(tmp_path / "am")
    path.write_bytes(b"\xef\xbb\xbf" + HISTORIES.replace("u2 f g h", "u2 f caf\xe9 h").encode("latin-1"))
    raw = {"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c")}}
    with pytest.raises(DataError, match=r"Toy\.txt:2: not UTF-8 text"):
        prepare(recipe_from_dict(raw).data, progress=False)
    raw["data"]["on_bad_rows"] = "skip"
    assert prepare(recipe_from_dict(raw).data, progress=False).report["splits"]["train"]["skipped_bad_rows"] == 1
    assert "u2" not in rows(path, "test")["user_id"] and rows(path, "test")["user_id"][0] == "u1"


def test_a_file_whose_every_line_is_not_utf8_names_its_first_line(tmp_path):
    """It was 'empty file (no users)', also with bad rows skipped."""
    path = write_amazon(tmp_path / "am")
    path.write_bytes(b"u1 caf\xe9 b c\n\nu2 na\xefve d e\n")
    raw = {"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c")}}
    with pytest.raises(DataError, match=rf"^{path}:1: not UTF-8 text$"):
        prepare(recipe_from_dict(raw).data, progress=False)
    raw["data"]["on_bad_rows"] = "skip"
    with pytest.raises(DataError, match=r"^data: no training rows: the 2 read were skipped as bad"):
        prepare(recipe_from_dict(raw).data, progress=False)


def test_a_user_who_touched_every_item_is_named_by_line(tmp_path):
    """No negative can be sampled for them: the error named neither the file nor the user
    (``ctr predict`` dropped its ``data.path`` key, leaving no name at all)."""
    path = write_amazon(tmp_path / "am", "u1 a b c\nu2 a b c d\nu3 b d\n")
    with pytest.raises(DataError, match=rf"^{path}:2: user u2 has touched every item; no negative can be "):
        rows(path, "train")


def test_a_carriage_return_inside_a_line_names_it_and_crlf_files_read(tmp_path):
    """Lines are numbered by ``\\n`` as an editor shows them: ``\\r\\n`` files (and blanks at a
    line's end) read alike, and a ``\\r`` inside a line (which would split it) is an error
    naming that line. (The ``\\r`` of ``\\r\\n`` was read as a last item, an empty one.)"""
    plain = read_histories(write_amazon(tmp_path / "plain"), tmp_path / "plain" / "Toy_item2attributes.json")
    for name, text in (("crlf", HISTORIES.replace("\n", "\r\n")), ("blanks", HISTORIES.replace("\n", " \t\n"))):
        read = read_histories(write_amazon(tmp_path / name, text), tmp_path / name / "Toy_item2attributes.json")
        assert read.users.to_pylist() == plain.users.to_pylist()
        assert read.item_names.take(pa.array(read.items)).to_pylist() == plain.item_names.take(pa.array(plain.items)).to_pylist()
        assert read.lengths.tolist() == plain.lengths.tolist()
    lines = HISTORIES.splitlines()
    lines[1] = lines[1].replace(" ", "\r", 1)
    bad = write_amazon(tmp_path / "bad", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Toy\.txt:2: a carriage return"):
        rows(bad, "train")


def test_ambiguous_folder_and_missing_attributes_are_errors(tmp_path):
    folder = write_amazon(tmp_path / "am").parent
    (folder / "Other.txt").write_text(HISTORIES)
    (folder / "Other_item2attributes.json").write_text("{}")
    with pytest.raises(DataError, match="several history files"):
        AmazonDataset(AmazonConfig(path=str(folder)))
    with pytest.raises(DataError, match="data.attributes: item attributes file .* does not exist"):
        AmazonDataset(AmazonConfig(path=str(folder / "Toy.txt"), attributes=str(folder / "none.json")))


@pytest.mark.skipif(not (SHARED_DATA / "amazon" / "Beauty.txt").is_file(), reason="needs ../shared/data/amazon (real Amazon Beauty)")
def test_amazon_beauty_row_counts():
    amazon = SHARED_DATA / "amazon"
    hist = read_histories(amazon / "Beauty.txt", amazon / "Beauty_item2attributes.json")
    assert hist.lengths.size == 22_363 and hist.lengths.sum() == 198_502
    counts = {s: targets(hist.lengths, s)[0].size * 2 for s in ("train", "valid", "test")}
    assert counts == {"train": 262_826, "valid": 44_726, "test": 44_726}
    assert pa.compute.count_distinct(hist.categories).as_py() > 100
    assert np.all(hist.lengths >= 5)


def test_rows_to_score_read_the_attributes_beside_them_with_the_training_files_gone(tmp_path):
    """Predict reads training's attributes only when none lie beside its input: it raised on
    training's history file, gone, though the input's own attributes were there."""
    new = write_amazon(tmp_path / "new")
    config = AmazonConfig(dataset="amazon", path=str(tmp_path / "gone" / "Beauty.txt")).reading(new)
    assert config.path == str(new) and config.attributes == str(new.with_name("Toy_item2attributes.json"))


def test_the_same_files_named_from_another_folder_or_as_their_folder_key_the_same_entry(tmp_path, monkeypatch):
    path = write_amazon(tmp_path / "am")
    absolute = AmazonDataset(AmazonConfig(path=str(path), attributes=str(path.with_name("Toy_item2attributes.json"))))
    monkeypatch.chdir(tmp_path)
    relative = AmazonDataset(AmazonConfig(path="am/Toy.txt", attributes="am/Toy_item2attributes.json"))
    assert relative.fingerprint() == absolute.fingerprint()
    beside = AmazonDataset(AmazonConfig(path="am/Toy.txt"))  # the same file, found beside the history
    assert beside.fingerprint() == absolute.fingerprint()
    folder = AmazonDataset(AmazonConfig(path="am"))  # the folder holding the history: the same files
    assert folder.fingerprint() == absolute.fingerprint()


def test_attributes_that_are_no_lists_are_an_error_and_none_found_a_warning(tmp_path, caplog):
    """An attributes file mapping each item to one category (``{"a": 1}``, not ``[1]``) made
    every category ``<none>``, silently; so did a file of other items' ids."""
    path = write_amazon(tmp_path / "am")
    attributes = path.with_name("Toy_item2attributes.json")
    attributes.write_text(json.dumps({**ATTRIBUTES, "b": 3}))
    with pytest.raises(DataError, match=rf"^{attributes}: item 'b' maps to 3, not a list of attribute ids$"):
        read_histories(path, attributes)
    attributes.write_text(json.dumps({"x1": [1], "x2": []}))
    assert set(read_histories(path, attributes).categories.to_pylist()) == {"<none>"}
    assert f"{attributes} names none of the 12 items of {path}: every category is <none>" in caplog.text


def test_gzip_histories_and_attributes_read_as_their_plain_copies(tmp_path):
    """``Beauty.txt.gz`` looked for ``Beauty.txt_item2attributes.json`` (a file) or was not
    found (a folder: no ``*.txt``), and a gzip attributes file failed to decode."""
    import bz2
    import gzip

    plain = write_amazon(tmp_path / "plain")
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "Toy.txt.gz").write_bytes(gzip.compress(HISTORIES.encode()))
    (packed / "Toy_item2attributes.json.gz").write_bytes(gzip.compress(json.dumps(ATTRIBUTES).encode()))
    expected = rows(plain, "train")
    assert rows(packed / "Toy.txt.gz", "train") == expected and rows(packed, "train") == expected
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "Toy.txt.bz2").write_bytes(bz2.compress(HISTORIES.encode()))
    with pytest.raises(DataError, match=r"data.path: folder .* holds no files matching '\*.txt' or '\*.txt.gz'"):
        AmazonDataset(AmazonConfig(path=str(tmp_path / "other")))
    with pytest.raises(DataError, match=r"data.path: .*Toy.txt.bz2: bzip2 data; text files are read plain or gzip"):
        AmazonDataset(AmazonConfig(path=str(tmp_path / "other" / "Toy.txt.bz2")))


def test_scored_rows_carry_keys_that_join_each_score_to_its_user_target_and_item(tmp_path):
    """Rows to score are built from the histories (each target with a sampled negative), and
    predict's output held only ``score`` and ``label``: nothing told which user, target or
    negative item a score was for. Each score now comes with its history line, user, target
    (i of b(i)) and item, in the order of the encoded rows, whatever the batches' sizes."""
    import pandas as pd

    from ctr.datasets.preprocess import encode_with_schema
    from ctr.train.predict import Scored, _write

    path = write_amazon(tmp_path / "am")
    config = recipe_from_dict({"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c")}}).data
    prepared = prepare(config, progress=False)
    (tmp_path / "new").mkdir()
    new = tmp_path / "new" / "New.txt"
    new.write_text("u2 f g h\nu9 a b c d\n")
    encoded = encode_with_schema(config.reading(new), prepared.root, tmp_path / "out", None, progress=False)
    assert encoded.tally.rows == 10  # u2: targets g, h; u9: b, c, d; each with a negative
    logits = np.linspace(-3.0, 3.0, 10)
    parts = (Scored(logits[a:b], np.tile([1, 0], 5)[a:b], None) for a, b in ((0, 3), (3, 4), (4, 10)))
    _write(parts, tmp_path / "scores.csv", True, None, encoded.keys)
    scores = pd.read_csv(tmp_path / "scores.csv", dtype={"user_id": str, "item_id": str})
    assert list(scores.columns) == ["line", "user_id", "target", "item_id", "score", "label"]
    streams = AmazonDataset(config.reading(new)).streams()
    built = pa.Table.from_batches([batch for split in ("train", "valid", "test") for batch in streams[split]()])
    assert scores["item_id"].tolist() == built.column("item_id").to_pylist()  # the sampled negatives too
    assert scores["item_id"].tolist()[::2] == ["b", "g", "c", "h", "d"]  # training targets first, then valid, test
    assert scores["line"].tolist() == [2, 2, 1, 1, 2, 2, 1, 1, 2, 2]
    assert scores["user_id"].tolist() == ["u9", "u9", "u2", "u2", "u9", "u9", "u2", "u2", "u9", "u9"]
    assert scores["target"].tolist() == [2, 2, 2, 2, 3, 3, 3, 3, 4, 4]
    assert np.allclose(scores["score"], 1 / (1 + np.exp(-logits))) and scores["label"].tolist() == [1, 0] * 5
    new.write_text("u0\nu2 f g h\nu9 a b c d\n")  # a user without items, skipped: the keys still name the rows
    skipping = dataclasses.replace(config.reading(new), on_bad_rows="skip")
    encoded = encode_with_schema(skipping, prepared.root, tmp_path / "skipped", None, progress=False)
    assert not encoded.numbered and pa.compute.min(pq.read_table(encoded.keys).column("line")).as_py() == 2


def test_the_input_paths_are_the_history_and_the_attributes_beside_it(tmp_path):
    """With data.path a folder or the history file, the attributes file beside it was no input:
    predict's --out could name it (and replace it)."""
    path = write_amazon(tmp_path / "am")
    for given in (path, path.parent):
        paths = AmazonConfig(path=str(given)).input_paths()
        assert paths["data.path's history file"] == path
        assert paths["data.path's attributes file"] == path.with_name("Toy_item2attributes.json")


def test_predict_refuses_an_out_that_is_read_with_its_input(tmp_path):
    """``ctr predict RUN new/New.txt --out new/New_item2attributes.json`` replaced the attributes
    file read beside INPUT with the scores (only INPUT itself and the training's files were
    refused); a movielens INPUT's ``.user`` file likewise."""
    from ctr.datasets.movielens import MovieLensConfig
    from ctr.errors import UserError
    from ctr.train.predict import _refuse_read_input

    trained = AmazonConfig(path=str(write_amazon(tmp_path / "am")))
    new = write_amazon(tmp_path / "new")
    attributes = new.with_name("Toy_item2attributes.json")
    with pytest.raises(UserError, match=f"^{attributes}: is read with the input {new}; choose another --out$"):
        _refuse_read_input(attributes, new, trained)
    _refuse_read_input(tmp_path / "new" / "scores.csv", new, trained)
    _refuse_read_input(tmp_path / "scores.csv", tmp_path / "absent.txt", trained)  # encoding names a bad input
    (tmp_path / "ml").mkdir()
    for name in ("ml.inter", "ml.user"):
        (tmp_path / "ml" / name).write_text("user_id:token\n1\n")
    with pytest.raises(UserError, match=r"ml\.user: is read with the input .*ml\.inter; choose another --out$"):
        _refuse_read_input(tmp_path / "ml" / "ml.user", tmp_path / "ml" / "ml.inter", MovieLensConfig(path=str(new)))


@pytest.mark.parametrize("keys, problem", [
    ({"user": "absent"}, "names column 'absent' (output user), which its rows lack (they have: "),
    ({"score": "item_id"}, "names an output column 'score', which predict writes itself (row, score, label)"),
])
def test_score_keys_of_a_plugin_that_its_rows_cannot_give_are_one_line(tmp_path, monkeypatch, keys, problem):
    """A ``score_keys`` column the built rows lack failed with pyarrow's KeyError traceback; an
    output name ``score`` (or ``row``, ``label``) was silently replaced by predict's own column."""
    from ctr.datasets.preprocess import encode_with_schema

    path = write_amazon(tmp_path / "am")
    config = recipe_from_dict({"data": {"dataset": "amazon", "path": str(path), "cache_dir": str(tmp_path / "c")}}).data
    prepared = prepare(config, progress=False)
    monkeypatch.setattr(AmazonDataset, "score_keys", keys)
    with pytest.raises(DataError) as err:
        encode_with_schema(config.reading(path), prepared.root, tmp_path / "out", None, progress=False)
    assert str(err.value).startswith(f"data.dataset: amazon's score_keys {problem}"), err.value
