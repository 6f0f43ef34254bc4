"""Every bad-input case: an error naming file and line (or column), exit code 2, no
traceback; with ``on_bad_rows: skip`` the rows are dropped and counted."""

import errno
import gzip
import json
import math
import re
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ctr.cli import main
from ctr.datasets import prepare, text
from ctr.datasets.shards import ShardWriter
from ctr.errors import DataError
from ctr.recipe import recipe_from_dict

HEADER = "Id,Label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))


def kaggle_row(i, label="0", first="1", extra=""):
    return f"{i},{label},{first}," + ",".join(["2"] * 12) + "," + ",".join([f"{i % 3:08x}"] * 26) + extra


def write_kaggle(tmp_path, bad_line: str | None = None, at: int = 3):
    lines = [HEADER] + [kaggle_row(i) for i in range(8)]
    if bad_line is not None:
        lines.insert(at - 1, bad_line)
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_prepare(tmp_path, capsys, data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"cache_dir": str(tmp_path / "cache"), **data}}))
    code = main(["data", "prepare", str(recipe)])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


@pytest.mark.parametrize(
    "bad, message",
    [
        (kaggle_row(99, extra=",x"), r"train\.csv:3: 42 fields, expected 41"),
        (kaggle_row(99, first="abc"), r"train\.csv:3: column 'I1': not a number: 'abc'"),
        (kaggle_row(99, label=""), r"train\.csv:3: label 'label' is missing"),
        (kaggle_row(99, label="2"), r"train\.csv:3: label 'label' is '2', not 0 or 1"),
        ("1,0", r"train\.csv:3: 2 fields, expected 41"),
        (kaggle_row(99, first="inf"), r"train\.csv:3: column 'I1': not a finite number: 'inf'"),
        (kaggle_row(99, first="-Infinity"), r"train\.csv:3: column 'I1': not a finite number: '-Infinity'"),
        (kaggle_row(99, first="nan"), r"train\.csv:3: column 'I1': not a finite number: 'nan'"),
        (kaggle_row(99) + "\r,x", r"train\.csv:3: a carriage return \(\\r\) inside the line"),
        (kaggle_row(99, first="1e400"), r"train\.csv:3: column 'I1': not a finite number: '1e400'"),
    ],
    ids=["too-many-fields", "not-a-number", "missing-label", "non-binary-label", "too-few-fields", "inf", "-infinity",
         "nan", "lone-carriage-return", "past-the-float-range"],
)
def test_bad_row_is_one_line_error_with_file_and_line(tmp_path, capsys, bad, message):
    path = write_kaggle(tmp_path, bad)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(path)})
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("ctr: error: ")
    assert re.search(message, err), err


def test_skip_drops_and_counts_bad_rows(tmp_path, capsys):
    path = write_kaggle(tmp_path, kaggle_row(99, label="7"))
    with path.open("a") as f:
        f.write(kaggle_row(100, extra=",x,y") + "\n" + kaggle_row(101, first="?") + "\n" + kaggle_row(102, first="inf") + "\n")
    code, err, out = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(path), "on_bad_rows": "skip"})
    assert code == 0, err
    report = json.loads(next((tmp_path / "cache" / "data").glob("criteo-*/report.json")).read_text())
    schema = json.loads(next((tmp_path / "cache" / "data").glob("criteo-*/schema.json")).read_text())
    assert all(math.isfinite(f["numeric"]["mean"]) for f in schema["features"] if f["numeric"])
    splits = report["splits"].values()
    assert sum(s["skipped_bad_rows"] for s in splits) == 4
    assert sum(s["rows"] for s in splits) == 8
    assert "skipped bad rows" in out


def test_a_skip_run_whose_every_training_row_is_bad_says_so(tmp_path, capsys):
    """It read "no training rows were read", though every row was read and skipped as bad."""
    path = tmp_path / "rows.csv"
    data = {"dataset": "csv", "path": str(path), "features": [{"name": "a"}], "on_bad_rows": "skip",
            "valid_path": str(tmp_path / "valid.csv"), "split": {"test": 0.0}}
    (tmp_path / "valid.csv").write_text("label,a\n1,x\n")
    path.write_text("label,a\n2,x\n3,y\n")
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and err == ("ctr: error: data: no training rows: the 2 read were skipped as bad (data.on_bad_rows: "
                                 "skip; on_bad_rows: error names the first)"), err


def test_non_finite_float_in_parquet_names_its_row(tmp_path, capsys):
    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [1, 0, 1], "a": ["x", "y", "z"], "price": [1.0, float("inf"), 2.0]}), table)
    features = [{"name": "a"}, {"name": "price", "kind": "numeric"}]
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(table), "features": features})
    assert code == 2 and f"{table} row 2: column 'price': not a finite number: inf" in err


@pytest.mark.parametrize("content, message", [("", "empty file"), (HEADER + "\n", "empty file")])
def test_empty_file(tmp_path, capsys, content, message):
    path = tmp_path / "train.csv"
    path.write_text(content)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(path)})
    assert code == 2 and f"{path}: {message}" in err


def test_a_path_that_is_a_fifo_is_named_as_one_not_as_missing(tmp_path, capsys):
    """A fifo (or a device: ``ctr predict RUN /dev/null``) read "data.path: ... does not exist"."""
    import os

    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(fifo)})
    assert code == 2 and err == f"ctr: error: data.path: {fifo}: not a regular file or folder (a fifo)", err


def test_empty_file_among_others_is_skipped_in_skip_mode(tmp_path, capsys, caplog):
    """Skipped with one warning (it was logged again at each pass over the rows)."""
    folder = tmp_path / "parts"
    folder.mkdir()
    write_kaggle(folder).rename(folder / "a.csv")
    (folder / "b.csv").write_text("")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(folder), "on_bad_rows": "skip"})
    assert code == 0, err
    assert caplog.text.count("b.csv: empty file") == 1  # a logged warning


def test_carriage_returns_the_parser_keeps_in_their_row_are_read(tmp_path, capsys):
    """A quoted ``\\r`` and a last line ended by ``\\r`` alone keep rows and lines aligned:
    they are read, not refused (only a ``\\r`` that splits a line is an error)."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b'label,a\r\n1,"x\ry"\r\n0,b\r\n1,c\r')
    code, err, out = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}],
                                                    "split": {"valid": 0.0, "test": 0.0}})
    assert code == 0, err
    assert re.search(r"train\s+rows\s+3\b", out), out


def test_a_line_break_inside_a_quoted_field_is_one_line(tmp_path, capsys):
    """A quoted ``\\n`` makes one row of two lines: rows could no longer be named by line."""
    path = tmp_path / "rows.csv"
    path.write_text('label,a\n1,"x\ny"\n0,b\n')
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.endswith("rows.csv:2: rows and lines do not match (a line break inside a quoted field?)"), err


def test_a_line_break_inside_a_quoted_field_names_the_line_of_its_quote(tmp_path, capsys):
    """The line whose quoted field runs on, not the whole block: quoted fields on one line,
    a quote inside a field (``5" screen``, read as text) and a doubled quote before it do
    not count."""
    path = tmp_path / "rows.csv"
    lines = ["label,a"] + [f'{i % 2},"t{i}"' for i in range(2000)]
    lines[300] = '1,5" screen'
    lines[400] = '0,"say ""hi"""'
    lines[1500] = '1,"multi'
    lines[1501] = 'line"'
    path.write_text("\n".join(lines) + "\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == f"ctr: error: {path}:1501: rows and lines do not match (a line break inside a quoted field?)", err


def test_blank_lines_a_byte_order_mark_and_padded_labels_are_read(tmp_path, capsys):
    """Blank lines (trailing or inside) are skipped and later line numbers stay right; a UTF-8
    byte order mark (as spreadsheet programs write) is not part of the first column's name;
    a label with blanks around it is a label."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b"\xef\xbb\xbflabel,a\n 1,x\n\n0 ,y\r\n\r\n1,z\n\n\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}],
                                                  "split": {"valid": 0.0, "test": 0.0}})
    assert code == 0, err
    report = json.loads(next((tmp_path / "cache").rglob("report.json")).read_text())
    assert report["splits"]["train"]["rows"] == 3 and report["splits"]["train"]["positive_rate"] == 2 / 3
    path.write_bytes(b"label,a\n1,x\n\n0,y\n\n2,z\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == f"ctr: error: {path}:6: label 'label' is '2', not 0 or 1", err
    path.write_bytes(b"label,a\n1,x\n\n\n0,y\n1\n1,z\n")  # the parser's own row count skips blank lines
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == f"ctr: error: {path}:6: 1 fields, expected 2", err


def test_blank_lines_before_the_first_row_or_the_header_are_skipped(tmp_path, capsys):
    """A file that starts with blank lines is not empty: a DAC file's first row and a csv
    file's header come after them (they read "empty file", and a skip run dropped the file's
    rows with a warning); later line numbers stay the file's."""
    dac = tmp_path / "day_0"
    row = "\t".join(["1"] + ["2"] * 13 + ["0000abcd"] * 26)
    dac.write_text(f"\n\r\n{row}\n{row.replace('1', '0', 1)}\n{row}\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(dac), "split": {"valid": 0.0, "test": 0.0}})
    assert code == 0, err
    report = json.loads(next((tmp_path / "cache").rglob("report.json")).read_text())
    assert report["splits"]["train"]["rows"] == 3 and report["splits"]["train"]["positive_rate"] == 2 / 3
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text("label,a\n1,x\n")
    (folder / "b.csv").write_text("\n\nlabel,a\n0,y\n1,z\n")
    data = {"dataset": "csv", "path": str(folder), "features": [{"name": "a"}], "split": {"valid": 0.0, "test": 0.0}}
    code, err, _ = run_prepare(tmp_path, capsys, {**data, "on_bad_rows": "skip", "cache_dir": str(tmp_path / "c2")})
    assert code == 0, err
    report = json.loads(next((tmp_path / "c2").rglob("report.json")).read_text())
    assert report["splits"]["train"]["rows"] == 3
    (folder / "b.csv").write_text("\n\nlabel,a\n0,y\n2,z\n")
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and err == f"ctr: error: {folder / 'b.csv'}:5: label 'label' is '2', not 0 or 1", err


def test_an_error_about_a_header_after_blank_lines_names_the_header_s_line(tmp_path, capsys):
    """A header or first row after blank lines is on a later line than 1, which its errors
    named."""
    kaggle = tmp_path / "train.csv"
    kaggle.write_text("\n\nId,Lable,I1\n1,0,2\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(kaggle)})
    assert code == 2 and err.startswith(f"ctr: error: {kaggle}:3: neither Criteo DAC TSV"), err
    rows = tmp_path / "rows.csv"
    rows.write_text("\r\nlabel,a,b\n1,x,y\n")
    data = {"dataset": "csv", "path": str(rows), "columns": ["label", "a"], "features": [{"name": "a"}]}
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and err == f"ctr: error: {rows}:2: the header has a different number of fields than data.columns"


def test_a_feature_reading_the_label_column_is_one_line(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_text("click,a\n1,x\n0,y\n")
    features = [{"name": "a"}, {"name": "leak", "source": "click"}]
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "label": "click", "features": features})
    assert code == 2 and err == "ctr: error: data.features (leak): reads the label column 'click'; a feature must not see the label"


def test_column_named_in_recipe_but_absent(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_text("label,a,b\n1,x,y\n")
    features = [{"name": "a"}, {"name": "price", "kind": "numeric"}]
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": features})
    assert code == 2
    assert f"data.features (price): column 'price' is absent from {path} (it has: label, a, b)" in err
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "label": "click", "features": [{"name": "a"}]})
    assert code == 2 and "data.label: column 'click' is absent" in err


def test_a_column_named_twice_in_the_header_is_one_line_when_it_is_read(tmp_path, capsys):
    """A feature reading a column the header names twice (which one?): one line, not the
    encoder's KeyError; a repeated column no one reads is left alone."""
    path = tmp_path / "rows.csv"
    path.write_text("label,a,b,a\n1,x,y,z\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == f"ctr: error: data.features (a): column 'a' appears 2 times in {path}; name it once"
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "b"}]})
    assert code == 0, err


def test_a_binary_file_read_as_text_is_one_line(tmp_path, capsys):
    """A parquet file given to the csv dataset (or any file with NUL bytes): named, not its
    bytes pasted into an 'absent column' message."""
    pq.write_table(pa.table({"label": [1, 0], "a": ["x", "y"]}), tmp_path / "rows.parquet")
    (tmp_path / "blob.csv").write_bytes(b"label,a\x00\x01\n1,x\n")
    (tmp_path / "excel.csv").write_bytes("label,a\r\n1,x\r\n".encode("utf-16"))  # "not a text file" before
    for name, said in (("rows.parquet", "a parquet file, not text (data.dataset: parquet reads it)"),
                       ("blob.csv", "not a text file (its first line holds NUL bytes)"),
                       ("excel.csv", "UTF-16 text (its byte order mark says so); text is read as UTF-8: convert it, "
                                     "e.g. iconv -f UTF-16 -t UTF-8")):
        data = {"dataset": "csv", "path": str(tmp_path / name), "features": [{"name": "a"}]}
        code, err, _ = run_prepare(tmp_path, capsys, data)
        assert code == 2 and err == f"ctr: error: {tmp_path / name}: {said}", err


def test_bad_libsvm_token_and_parquet_label_name_their_row(tmp_path, capsys):
    path = tmp_path / "rows.txt"
    path.write_text("1 3:1\n0 4:1 junk\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "libsvm", "path": str(path)})
    assert code == 2 and f"{path}:2: a feature is not 'index:value'" in err
    table = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [1, 0, 3], "a": ["x", "y", "z"]}), table)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(table), "features": [{"name": "a"}]})
    assert code == 2 and f"{table} row 3: label 'label' is 3, not 0 or 1" in err


def make_sources(tmp_path):
    """A tiny input of every reader: (data block of the recipe, expected rows)."""
    from tests.datasets.test_amazon import write_amazon
    from tests.datasets.test_movielens import write_movielens

    kaggle = write_kaggle(tmp_path)
    dac = tmp_path / "day.txt"
    dac.write_text("".join("\t".join(kaggle_row(i).split(",")[1:]) + "\n" for i in range(6)))
    avazu = tmp_path / "avazu.csv"
    avazu.write_text("id,click,hour,C1\n" + "".join(f"{i},{i % 2},141021{10 + i},5\n" for i in range(6)))
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [0, 1] * 3, "a": list("abcdef")}), parquet)
    svm = tmp_path / "rows.svm"
    svm.write_text("".join(f"{i % 2} {i}:1 {i + 7}:1\n" for i in range(6)))
    movielens = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, 1), (1, 20, 4)])
    return {
        "criteo-kaggle": ({"dataset": "criteo", "path": str(kaggle)}, 8),
        "criteo-dac": ({"dataset": "criteo", "path": str(dac)}, 6),
        "avazu": ({"dataset": "avazu", "path": str(avazu), "features": [{"name": "C1"}, {"name": "hour_of_day"}]}, 6),
        "csv": ({"dataset": "csv", "path": str(avazu), "label": "click", "features": [{"name": "C1"}]}, 6),
        "parquet": ({"dataset": "parquet", "path": str(parquet), "features": [{"name": "a"}]}, 6),
        "libsvm": ({"dataset": "libsvm", "path": str(svm)}, 6),
        "movielens": ({"dataset": "movielens", "path": str(movielens)}, 3),
        "amazon": ({"dataset": "amazon", "path": str(write_amazon(tmp_path / "am"))}, 2 * 12),
    }


@pytest.mark.parametrize("reader", ["criteo-kaggle", "criteo-dac", "avazu", "csv", "parquet", "libsvm", "movielens", "amazon"])
def test_preparation_killed_midway_leaves_no_entry_for_any_reader(tmp_path, monkeypatch, reader):
    data, rows = make_sources(tmp_path)[reader]
    recipe = recipe_from_dict({"data": {**data, "cache_dir": str(tmp_path / "cache")}})
    original = ShardWriter.write

    def killed(self, batch):
        original(self, batch)
        raise KeyboardInterrupt  # killed while writing encoded shards

    monkeypatch.setattr(ShardWriter, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(recipe.data, progress=False)
    cache = tmp_path / "cache" / "data"
    assert not any((entry / "DONE").exists() for entry in cache.iterdir())
    monkeypatch.setattr(ShardWriter, "write", original)
    prepared = prepare(recipe.data, progress=False)
    assert (prepared.root / "DONE").exists()
    assert sum(s["rows"] for s in prepared.report["splits"].values()) == rows
    assert [p.name for p in cache.iterdir()] == [prepared.root.name]  # no temporary folder left


def test_a_full_cache_disk_names_data_cache_dir_and_leaves_no_entry(tmp_path, monkeypatch):
    """pyarrow's write on a full disk (an OSError with no file) was a traceback."""
    data, _ = make_sources(tmp_path)["csv"]
    recipe = recipe_from_dict({"data": {**data, "cache_dir": str(tmp_path / "cache")}})

    def full(self, batch):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(ShardWriter, "write", full)
    with pytest.raises(DataError, match=re.escape(f"data.cache_dir: {tmp_path / 'cache' / 'data'}: no space left on "
                                                  "device for the encoded data")):
        prepare(recipe.data, progress=False)
    assert not list((tmp_path / "cache" / "data").iterdir())


def parquet_of(tmp_path, **columns):
    """A three-row parquet file with a ``label`` column and ``columns``."""
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [1, 0, 1], "a": ["x", "y", "z"], **columns}), path)
    return path


@pytest.mark.parametrize(
    "column, feature, message",
    [
        (pa.array([["p"], ["q", "r"], []]), {"name": "c"},
         "column 'c' (list<element: string>) cannot be read by data.features (c), kind categorical; declare kind: sequence"),
        (pa.array([[1], [2], []]), {"name": "n", "source": "c", "kind": "numeric"},
         "column 'c' (list<element: int64>) cannot be read by data.features (n), kind numeric; declare kind: sequence"),
        (pa.array([{"u": 1}, {"u": 2}, {"u": 3}]), {"name": "c"},
         "column 'c' (struct<u: int64>) cannot be read by data.features (c), kind categorical; store it as strings or numbers"),
        (pa.array([[("k", 1)], [], [("k", 2)]], pa.map_(pa.string(), pa.int64())), {"name": "c", "kind": "numeric"},
         "column 'c' (map<string, int64 ('c')>) cannot be read by data.features (c), kind numeric; store it as numbers"),
        (pa.array([[["p"]], [], [["q"]]]), {"name": "c", "kind": "sequence"},
         "column 'c' (list<element: list<element: string>>) cannot be read by data.features (c), kind sequence; "
         "store it as a list of strings or numbers"),
        (pa.array([1, 2, 3], pa.timestamp("s")), {"name": "c", "kind": "numeric"},
         "column 'c' (timestamp[ms]) cannot be read by data.features (c), kind numeric; "
         "declare kind: categorical, or store it as numbers"),
        (pa.array([["p"], [], ["q"]]), {"name": "c", "num_ids": 10},
         "column 'c' (list<element: string>) cannot be read by data.features (c), kind categorical with num_ids; "
         "declare kind: sequence"),
    ],
    ids=["list-as-categorical", "list-as-numeric", "struct", "map", "list-of-lists-as-sequence", "timestamp-as-numeric",
         "list-as-num-ids"],
)
def test_a_parquet_column_of_a_type_its_feature_cannot_read_is_one_line(tmp_path, capsys, column, feature, message):
    """A column whose Arrow type the declared kind cannot convert: the file, the column, its
    type, who reads it and what to declare instead, not pyarrow's cast error."""
    path = parquet_of(tmp_path, c=column)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": [{"name": "a"}, feature]})
    assert code == 2 and err == f"ctr: error: {path}: {message}", err


def test_a_parquet_label_of_lists_or_past_2_53_is_one_line(tmp_path, capsys):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [[1], [0], [1]], "a": ["x", "y", "z"]}), path)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == (f"ctr: error: {path}: column 'label' (list<element: int64>) cannot be read by data.label; "
                                 "store it as numbers"), err
    pq.write_table(pa.table({"label": [1, 0, 1700000000123456789], "a": ["x", "y", "z"]}), path)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == f"ctr: error: {path} row 3: label 'label' is 1700000000123456789, not 0 or 1", err


def test_parquet_bytes_that_are_not_utf8_name_their_row(tmp_path, capsys):
    path = parquet_of(tmp_path, b=pa.array([b"ok", b"caf\xe9", b"x"], pa.binary()))
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": [{"name": "b"}]})
    assert code == 2 and err == (f"ctr: error: {path} row 2: column 'b' (binary) is not UTF-8 text, which data.features (b), "
                                 "kind categorical reads; store it as UTF-8 strings (binary ids hex-encoded)"), err
    path = parquet_of(tmp_path, b=pa.array([[b"ok"], [], [b"x", b"\xff"]], pa.list_(pa.binary())))
    features = [{"name": "b", "kind": "sequence"}]
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": features})
    assert code == 2 and f"{path} row 3: column 'b' (list<element: binary>) is not UTF-8 text" in err, err


def test_parquet_bytes_fixed_size_lists_and_int64_past_2_53_are_read(tmp_path, capsys):
    """UTF-8 bytes read as text, a fixed-size list as a sequence, and an int64 that no
    float64 holds exactly (a nanosecond time) as its nearest float, not refused."""
    path = parquet_of(tmp_path, b=pa.array([b"p", b"q", b"p"], pa.binary()),
                      s=pa.array([[b"u", b"v"], [b"v", b"w"], [b"u", b"u"]], pa.list_(pa.binary())),
                      f=pa.array([["u", "v"], ["v", "w"], None], pa.list_(pa.string(), 2)),
                      ns=pa.array([1700000000123456789, 1700000001000000001, 3], pa.int64()))
    features = [{"name": "b"}, {"name": "s", "kind": "sequence"}, {"name": "f", "kind": "sequence"}, {"name": "ns", "kind": "numeric"}]
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": features,
                                                  "split": {"valid": 0.0, "test": 0.0}})
    assert code == 0, err
    train = pq.read_table(next((tmp_path / "cache" / "data").glob("parquet-*/train")))
    assert train.column("ns").to_pylist() == pytest.approx([1.7000000001234568e18, 1.700000001e18, 3.0])
    assert [len(s) for s in train.column("f").to_pylist()] == [2, 2, 0]
    vocab = pq.read_table(next((tmp_path / "cache" / "data").glob("parquet-*/vocab/s.parquet"))).column("token").to_pylist()
    assert {"u", "v", "w"} <= set(vocab)


def gzip_rows(rows: int) -> bytes:
    return gzip.compress(b"label,a\n" + b"".join(b"%d,t%d\n" % (i % 2, i) for i in range(rows)), mtime=0)


def test_a_truncated_or_corrupt_gzip_file_names_the_last_whole_line(tmp_path, capsys):
    """Gzip data that ends early or does not inflate: the file and the last line read
    whole, not EOFError / zlib.error; the whole lines before are exactly those."""
    path = tmp_path / "day.csv.gz"
    data = {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]}
    whole = gzip_rows(5000)
    path.write_bytes(whole[:-100])
    inflater = zlib.decompressobj(wbits=47)
    lines = inflater.decompress(whole[:-100]).count(b"\n")
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and err == (f"ctr: error: {path}: truncated or corrupt gzip data after line {lines} "
                                 "(Compressed file ended before the end-of-stream marker was reached)"), err
    path.write_bytes(whole[:15])  # not even the header inflates
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and err.startswith(f"ctr: error: {path}: truncated or corrupt gzip data after line 0 ("), err
    damaged = bytearray(whole)
    for i in range(len(whole) // 2, len(whole) // 2 + 50):
        damaged[i] ^= 0x5A
    path.write_bytes(bytes(damaged))
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and re.fullmatch(rf"ctr: error: {re.escape(str(path))}: truncated or corrupt gzip data after line \d+ "
                                      r"\(Error -3 while decompressing data: .*\)", err), err


def test_a_truncated_gzip_history_file_is_one_line(tmp_path, capsys):
    from tests.datasets.test_amazon import write_amazon

    history = write_amazon(tmp_path / "am")
    history.write_bytes(gzip.compress(history.read_bytes())[:-12])
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "amazon", "path": str(history)})
    assert code == 2 and f"{history}: truncated or corrupt gzip data after line " in err and len(err.splitlines()) == 1, err


def test_a_damaged_parquet_page_names_its_row_group(tmp_path, capsys):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [1, 0, 1] * 1000, "a": ["x", "y", "z"] * 1000}), path, row_group_size=1000)
    second = pq.ParquetFile(path).metadata.row_group(1)
    start = min(second.column(i).data_page_offset for i in range(second.num_columns))
    damaged = bytearray(path.read_bytes())
    for i in range(start, start + 40):
        damaged[i] ^= 0x5A
    path.write_bytes(bytes(damaged))
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "parquet", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"ctr: error: {path}: corrupt parquet data in row group 2 of 3, rows 1001-2000 ("), err


def test_a_line_that_is_not_utf8_is_a_bad_row_naming_its_line_and_column(tmp_path, capsys):
    """One Latin-1 byte: its line and its column's name, not the whole block refused; with
    ``on_bad_rows: skip`` that row is skipped like any bad row. A byte in a column no one
    reads is no problem."""
    path = tmp_path / "rows.csv"
    lines = [b"label,a,b,note"] + [b"%d,t%d,u,n" % (i % 2, i) for i in range(50)]
    lines[4] = b"1,caf\xe9,u,n"
    lines[9] = b"0,t9,\xff\xfe,n"
    lines[20] = b"0,t20,u,fa\xe7ade"  # column 'note' is not read
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = {"dataset": "csv", "path": str(path), "features": [{"name": "a"}, {"name": "b"}], "split": {"valid": 0.0, "test": 0.0}}
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 2 and err == f"ctr: error: {path}:5: column 'a': not UTF-8 text", err
    code, err, _ = run_prepare(tmp_path, capsys, {**data, "on_bad_rows": "skip"})
    assert code == 0, err
    report = json.loads(next((tmp_path / "cache").rglob("report.json")).read_text())
    assert report["splits"]["train"]["skipped_bad_rows"] == 2 and report["splits"]["train"]["rows"] == 48


def test_bytes_not_utf8_in_a_column_no_one_reads_are_parsed_as_they_are(tmp_path, capsys, monkeypatch):
    """A Latin-1 column no feature reads: its blocks are read as they are, not searched line by
    line (every such block was: 2-3x slower to prepare); every row kept, none a bad row."""
    monkeypatch.setattr(text, "_not_utf8", lambda *args: pytest.fail("searched a block line by line"))
    path = tmp_path / "rows.csv"
    path.write_bytes(b"label,a,note\n" + b"".join(b"%d,t%d,caf\xe9 %d\n" % (i % 2, i % 7, i) for i in range(60)))
    data = {"dataset": "csv", "path": str(path), "features": [{"name": "a"}], "split": {"valid": 0.0, "test": 0.0}}
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert code == 0, err
    report = json.loads(next((tmp_path / "cache").rglob("report.json")).read_text())
    assert report["splits"]["train"]["rows"] == 60 and report["splits"]["train"]["skipped_bad_rows"] == 0


@pytest.mark.parametrize("skip", [False, True])
def test_a_short_row_that_is_not_utf8_is_a_bad_row_and_no_ignored_exception(tmp_path, capsys, monkeypatch, skip):
    """A raw DAC row that lacks its trailing empty fields (the parser hands such rows to a
    handler, which pads them) with a Latin-1 byte: pyarrow's handler failed to decode its text,
    and Python printed 'Exception ignored ... UnicodeDecodeError' tracebacks before the error."""
    import sys

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    path = tmp_path / "train.txt"
    rows = ["\t".join([str(i % 2), *["1"] * 13, *[f"{i:08x}"] * (26 - i % 2)]) for i in range(20)]
    path.write_bytes(("\n".join(rows) + "\n").replace("\t00000003", "\tcaf\xe9", 1).encode("latin-1"))
    data = {"dataset": "criteo", "path": str(path), "on_bad_rows": "skip" if skip else "error"}
    code, err, _ = run_prepare(tmp_path, capsys, data)
    assert not ignored
    if skip:
        report = json.loads(next((tmp_path / "cache").rglob("report.json")).read_text())
        assert code == 0 and sum(split["skipped_bad_rows"] for split in report["splits"].values()) == 1
    else:
        assert code == 2 and err == f"ctr: error: {path}:4: column 'C1': not UTF-8 text", err


def test_a_libsvm_line_that_is_not_utf8_names_its_line(tmp_path, capsys):
    path = tmp_path / "rows.svm"
    path.write_bytes(b"1 3:1\n0 4:1 5\xe9:1\n1 3:1\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "libsvm", "path": str(path)})
    assert code == 2 and err == f"ctr: error: {path}:2: not UTF-8 text", err


def test_a_quoted_header_name_may_hold_the_delimiter_or_a_quote(tmp_path, capsys):
    """pandas quotes a column name holding the delimiter (``"city, state"``) or a quote
    (doubled): the header has as many names as the rows have fields."""
    path = tmp_path / "rows.csv"
    path.write_text('label,"city, state","say ""hi""",zip\n1,"a, b",p,1\n0,c,q,2\n')
    features = [{"name": "city", "source": "city, state"}, {"name": "hi", "source": 'say "hi"'}, {"name": "zip"}]
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": features,
                                                  "split": {"valid": 0.0, "test": 0.0}})
    assert code == 0, err
    vocab = pq.read_table(next((tmp_path / "cache").rglob("vocab/city.parquet"))).column("token").to_pylist()
    assert {"a, b", "c"} <= set(vocab)


@pytest.mark.parametrize("content", [b'label,a\n1,x\n0,"z\n', b'label,a\n1,x\n0,"z', b'label,a\n1,x\n0,"z\r\n\n\n'],
                         ids=["last-line", "no-final-newline", "blank-lines-after"])
def test_an_unclosed_quote_on_the_last_line_is_refused(tmp_path, capsys, content):
    """``0,"z`` as the last line: the parser would read the token ``z`` and its line break;
    refused naming the line."""
    path = tmp_path / "rows.csv"
    path.write_bytes(content)
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "path": str(path), "features": [{"name": "a"}]})
    assert code == 2 and err == f"ctr: error: {path}:3: a quoted field is not closed before the line ends", err


@pytest.mark.parametrize("block_bytes", [1 << 20, 9, 12])
def test_an_unclosed_quote_names_its_line_wherever_the_blocks_end(tmp_path, block_bytes):
    """A quote opened on line 3 and never closed, at the end of a block or inside one: line 3."""
    from ctr.datasets.text import TextFormat, read_delimited

    path = tmp_path / "rows.csv"
    path.write_bytes(b'label,a\n1,x\n0,"y\n1,z\n0,w\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: "):
        list(read_delimited(path, TextFormat(["label", "a"], header=True), block_bytes=block_bytes))


@pytest.mark.parametrize("header, problem", [
    (HEADER.replace("C26", "C26x"), "column 41 is 'C26x', not 'C26'"),
    (HEADER.replace(",C13,", ",C13,C13,"), "column 29 is 'C13', not 'C14'"),
    (HEADER.removesuffix(",C26"), "it has 40 columns, not 41"),
])
def test_a_criteo_kaggle_header_names_its_first_wrong_column(tmp_path, capsys, header, problem):
    """The error quoted the header's first 60 characters, which hold no mistake past I13."""
    path = tmp_path / "train.csv"
    path.write_text("\n".join([header, kaggle_row(0)]) + "\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "criteo", "path": str(path)})
    assert code == 2 and err == f"ctr: error: {path}:1: expected the Criteo Kaggle header Id,Label,I1..I13,C1..C26; {problem}"


@pytest.mark.parametrize("reader", ["criteo", "csv"])
def test_rows_of_old_mac_line_ends_without_a_header_name_line_1(tmp_path, capsys, reader):
    """Rows ended by ``\\r`` alone in a file without a header (raw Criteo DAC, a csv with
    ``header: false``) were an IndexError traceback where one was short (DAC's lack trailing
    empty fields): the parser's rows outnumbered the lines."""
    if reader == "criteo":
        path, data = tmp_path / "train.txt", {"dataset": "criteo"}
        path.write_text("".join("\t".join([str(i % 2), *["1"] * 13, *[f"{i:08x}"] * (26 - i % 2)]) + "\r" for i in range(6)))
    else:
        path = tmp_path / "rows.csv"
        data = {"dataset": "csv", "header": False, "columns": ["label", "a"], "label": "label", "features": [{"name": "a"}]}
        path.write_bytes(b"1,x\r0,y\r1\r")
    code, err, _ = run_prepare(tmp_path, capsys, {**data, "path": str(path)})
    assert code == 2 and err == f"ctr: error: {path}:1: a carriage return (\\r) inside the line; lines end with \\n or \\r\\n"


@pytest.mark.parametrize("reader", ["csv", "movielens", "criteo"])
def test_a_header_split_by_carriage_returns_names_line_1(tmp_path, capsys, reader):
    """A file of old Mac line ends (``\\r`` alone) is one header line: it was read as the
    header, a csv's error listing the rows as column names (with their ``\\r``), a MovieLens
    file 'empty (no data rows)', a Criteo Kaggle file 'expected the Criteo Kaggle header'."""
    if reader == "csv":
        path, data = tmp_path / "rows.csv", {"dataset": "csv", "features": [{"name": "a"}]}
        path.write_bytes(b"label,a\r1,x\r0,y\r")
    elif reader == "criteo":
        path, data = tmp_path / "train.csv", {"dataset": "criteo"}
        path.write_text("\r".join([HEADER, kaggle_row(0), kaggle_row(1)]) + "\r")
    else:
        path, data = tmp_path / "ml.inter", {"dataset": "movielens"}
        path.write_bytes(b"user_id:token\titem_id:token\trating:float\r1\t10\t5\r2\t20\t1\r")
    code, err, _ = run_prepare(tmp_path, capsys, {**data, "path": str(path)})
    assert code == 2 and err == f"ctr: error: {path}:1: a carriage return (\\r) inside the line; lines end with \\n or \\r\\n"


def test_a_file_of_a_data_folder_whose_name_is_not_utf8_is_named(tmp_path, capsys):
    """A folder holding ``r\\xe9.csv`` (a Latin-1 byte) ended in pyarrow's UnicodeEncodeError
    traceback (its KeyValueMetadata of the file's name)."""
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "r\udce9.csv").write_text("label,a\n1,x\n0,y\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "csv", "features": [{"name": "a"}], "path": str(folder)})
    assert code == 2
    assert err == f"ctr: error: data.path: {folder}/r\\xe9.csv: a name that is not UTF-8 (byte 0xe9); rename it"


def test_a_featindex_whose_name_is_not_utf8_is_named(tmp_path, capsys):
    """A libsvm ``data.featindex`` in a folder ``caf\\xe9`` was refused as a plugin's broken
    default_features() quoting pyarrow's UnicodeEncodeError, naming neither the key nor the file."""
    index = tmp_path / "caf\udce9" / "featindex.txt"
    index.parent.mkdir()
    index.write_text("weekday:0\t0\nweekday:1\t1\n")
    path = tmp_path / "train.txt"
    path.write_text("0 1:1\n1 0:1\n")
    code, err, _ = run_prepare(tmp_path, capsys, {"dataset": "libsvm", "path": str(path), "featindex": str(index)})
    assert code == 2
    assert err == (f"ctr: error: data.featindex: {tmp_path}/caf\\xe9/featindex.txt: a name that is not UTF-8 "
                   "(byte 0xe9); rename it")


@pytest.mark.parametrize("where", ["data.cache_dir", "$CTR_CACHE", "HOME"])
def test_a_cache_whose_path_is_not_utf8_is_named(tmp_path, capsys, monkeypatch, where):
    """``CTR_CACHE=/tmp/caf\\xe9/cache`` (or such a ``data.cache_dir``, or HOME under the default
    ``~/.cache/ctr``) ended in pyarrow's UnicodeEncodeError traceback as the entry was written."""
    path = tmp_path / "rows.csv"
    path.write_text("label,a\n1,x\n0,y\n")
    cafe = tmp_path / "caf\udce9"
    monkeypatch.delenv("CTR_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(cafe))
    data = {"dataset": "csv", "features": [{"name": "a"}], "path": str(path)}
    if where == "$CTR_CACHE":
        monkeypatch.setenv("CTR_CACHE", str(cafe / "cache"))
    recipe = {"data": {**data, "cache_dir": str(cafe / "cache")} if where == "data.cache_dir" else data}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code = main(["data", "prepare", str(tmp_path / "recipe.yaml")])
    named = {"HOME": "~/.cache/ctr"}.get(where, where)
    full = f"{tmp_path}/caf\\xe9/" + ("cache" if where != "HOME" else ".cache/ctr") + "/data"
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"ctr: error: {named}: {full}: a name that is not UTF-8 (byte 0xe9); name another cache folder")
    assert not cafe.exists()
