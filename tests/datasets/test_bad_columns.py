"""Recipes and files whose columns ctr cannot read as asked: one line naming the key or the
file and line, exit code 2; before, each of these was silent or a traceback."""

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ctr.cli import main


def prepare(tmp_path, capsys, data, text, name="rows.csv"):
    (tmp_path / name).write_text(text)
    recipe = tmp_path / "recipe.yaml"
    base = {"path": str(tmp_path / name), "cache_dir": str(tmp_path / "cache"), "split": {"valid": 0.0, "test": 0.0}}
    recipe.write_text(yaml.safe_dump({"data": {**base, **data}}))
    code = main(["data", "prepare", str(recipe)])
    return code, capsys.readouterr().err.strip()


def test_a_feature_named_as_the_encoded_label_is_refused(tmp_path, capsys):
    """It overwrote the label column of the encoded shards: training read ids as labels."""
    data = {"dataset": "csv", "features": [{"name": "__label__", "source": "a"}, {"name": "b"}]}
    code, err = prepare(tmp_path, capsys, data, "label,a,b\n1,x,u\n0,y,v\n")
    assert code == 2 and err == ("ctr: error: data.features[0]: feature '__label__': the name is reserved for the "
                                 "encoded data's own column; rename it")


def test_an_empty_splitter_is_refused(tmp_path, capsys):
    data = {"dataset": "csv", "features": [{"name": "a", "kind": "sequence", "splitter": ""}]}
    code, err = prepare(tmp_path, capsys, data, "label,a\n1,x^y\n")
    assert code == 2 and err == "ctr: error: data.features[0]: feature 'a': splitter must not be empty"


@pytest.mark.parametrize("feature, message", [
    ({"name": "a", "oov_buckets": 10**20}, "oov_buckets 100000000000000000000 gives ids past int32's 2147483647"),
    ({"name": "a", "oov_buckets": 10**12}, "oov_buckets 1000000000000 gives ids past int32's 2147483647"),
    ({"name": "a", "num_ids": 10**12}, "num_ids 1000000000000 gives ids past int32's 2147483647"),
    ({"name": "a", "num_ids": 2**31 - 2, "oov_buckets": 2}, "num_ids 2147483646 and oov_buckets 2 give ids past"),
    ({"name": "x", "kind": "numeric", "transform": "quantile", "num_buckets": 10**12},
     "num_buckets must be in [1, 16777216] (a float32 quantile tells no more apart), got 1000000000000"),
    ({"name": "x", "kind": "numeric", "fill": 1e39}, "fill 1e+39 is past the float32 range (±3.403e+38) of the encoded data"),
    ({"name": "x", "kind": "numeric", "fill": -1e39}, "fill -1e+39 is past the float32 range"),
])
def test_id_and_bucket_counts_past_their_range_are_refused(tmp_path, capsys, feature, message):
    """Each was a traceback (numpy's int32 overflow, a 7 TiB allocation, 'Maximum allowed
    dimension exceeded') once the data was read; a fill past float32 was encoded as inf."""
    code, err = prepare(tmp_path, capsys, {"dataset": "csv", "features": [feature]}, "label,a,x\n1,1,0.5\n0,2,1.5\n")
    assert code == 2 and err.startswith(f"ctr: error: data.features[0]: feature '{feature['name']}': "), err
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize("max_vocab", [0, -1])
def test_a_max_vocab_below_one_is_refused(tmp_path, capsys, max_vocab):
    """Both kept no token: every value of the feature was OOV, and the run trained on it unwarned."""
    data = {"dataset": "csv", "features": [{"name": "a", "max_vocab": max_vocab}, {"name": "b"}]}
    code, err = prepare(tmp_path, capsys, data, "label,a,b\n1,x,u\n0,y,v\n")
    assert code == 2 and err == (f"ctr: error: data.features[0]: feature 'a': max_vocab must be >= 1 or null (no "
                                 f"limit), got {max_vocab}")


@pytest.mark.parametrize("header, message", [
    ("label,a,b,", r"a column of .*rows\.csv's header has no name \(column 4\); add '' to data\.features\.skip"),
    ("label,a,b,a", r"column 'a' appears 2 times in .*rows\.csv's header; name it once"),
])
def test_the_shorthand_refuses_an_unnamed_or_repeated_header_column(tmp_path, capsys, header, message):
    """A trailing delimiter made a feature named '' (its vocabulary the hidden file
    vocab/.parquet); a repeated name was reported at an index the recipe does not have."""
    rows = "".join(f"{i % 2},x{i},y{i},z{i}\n" for i in range(6))
    code, err = prepare(tmp_path, capsys, {"dataset": "csv", "features": {"default_kind": "categorical"}}, f"{header}\n{rows}")
    assert code == 2 and err.count("\n") == 0
    assert re.search(r"^ctr: error: data\.features: " + message, err), err


def test_the_shorthand_reads_an_unnamed_column_it_is_told_to_skip(tmp_path, capsys):
    data = {"dataset": "csv", "features": {"default_kind": "categorical", "skip": [""]}}
    assert prepare(tmp_path, capsys, data, "label,a,\n1,x,\n0,y,\n")[0] == 0


@pytest.mark.parametrize("skip", [False, True])
def test_a_number_past_the_float32_range_is_a_bad_row(tmp_path, capsys, skip):
    """1e39 was stored as inf in the encoded data (float32), with only a numpy warning."""
    data = {"dataset": "csv", "features": [{"name": "a"}, {"name": "x", "kind": "numeric"}],
            **({"on_bad_rows": "skip"} if skip else {})}
    code, err = prepare(tmp_path, capsys, data, "label,a,x\n1,u,0.5\n0,v,1e39\n1,w,-3.4e38\n")
    if skip:
        assert code == 0
        report = yaml.safe_load(next((tmp_path / "cache" / "data").glob("*/report.json")).read_text())
        assert report["splits"]["train"]["rows"] == 2
    else:
        assert code == 2 and err == ("ctr: error: " + str(tmp_path / "rows.csv")
                                     + ":3: column 'x': '1e39' is past the float32 range (±3.403e+38) of the encoded data")


def test_libsvm_lines_with_blanks_at_either_end_are_read(tmp_path, capsys):
    """A trailing blank made an empty token, refused as 'not index:value'."""
    code, err = prepare(tmp_path, capsys, {"dataset": "libsvm"}, "1 3:1 5:1 \n 0 4:1\n", name="rows.svm")
    assert code == 0, err


@pytest.mark.parametrize("line", ["1 3:0.5 5:2.7", "1 3:1 4:0"])
def test_a_libsvm_sequence_value_other_than_1_is_a_bad_row(tmp_path, capsys, line):
    """The values of a sequence's indices were dropped silently (a categorical field refused them)."""
    code, err = prepare(tmp_path, capsys, {"dataset": "libsvm"}, f"0 4:1\n{line}\n", name="rows.svm")
    assert code == 2 and err.endswith("rows.svm:2: a feature has a value other than 1 (a sequence reads its indices only)")


def test_a_folder_leaves_out_hidden_files_and_spark_markers(tmp_path, capsys):
    """Spark writes _SUCCESS and .part-*.crc beside its parts: they were read as rows."""
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "part-0.csv").write_text("label,a\n1,x\n0,y\n")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.csv.crc").write_bytes(b"crc\x00\x01")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "csv", "path": str(folder), "features": [{"name": "a"}],
                                               "cache_dir": str(tmp_path / "cache"), "split": {"valid": 0.0, "test": 0.0}}}))
    assert main(["data", "prepare", str(recipe)]) == 0, capsys.readouterr().err


def test_a_field_longer_than_the_csv_modules_limit_is_read(tmp_path, capsys):
    """The last line's quote check read it with the csv module, whose 128 KiB field limit
    raised a traceback on a valid file (the long field in a column nothing reads)."""
    text = 'label,a,b\n0,x,"short"\n1,y,"' + "w" * 200_000 + '"\n'
    code, err = prepare(tmp_path, capsys, {"dataset": "csv", "features": [{"name": "a"}]}, text)
    assert code == 0, err


@pytest.mark.parametrize("feature", [{"name": "x", "kind": "numeric", "transform": "log1p"},
                                     {"name": "x", "kind": "numeric", "transform": "quantile"},
                                     {"name": "x", "transform": "log_square"}])
def test_a_number_past_the_float32_range_is_read_where_its_transform_brings_it_in(tmp_path, capsys, feature):
    """log1p(1e39) is 89.8: only a value stored as read (or standardized) must fit float32."""
    text = "label,a,x\n1,u,0.5\n0,v,1e39\n1,w,3\n"
    code, err = prepare(tmp_path, capsys, {"dataset": "csv", "features": [{"name": "a"}, feature]}, text)
    assert code == 0, err


@pytest.mark.parametrize("kind, kept, refused, message", [
    ("numeric", "-3.4e38", "-1e39", "'-1e39' is past the float32 range (±3.403e+38) of the encoded data"),
    ("categorical", "-9223372036854775808", "-1e19",
     "'-1e19' is past the int64 range (±9.223e+18) of a log_square token"),
], ids=["numeric", "categorical"])
@pytest.mark.parametrize("skip", [False, True])
def test_a_log_square_value_kept_as_read_past_its_range_is_a_bad_row(tmp_path, capsys, kind, kept, refused, message,
                                                                      skip):
    """log_square keeps round(x) of x <= 2: -1e39 was stored as -inf (NaN scores, a numpy
    warning) and -1e19 stopped a categorical's int64 cast with a traceback. x > 2 is
    brought in range (1e39 is read)."""
    data = {"dataset": "csv", "features": [{"name": "a"}, {"name": "x", "kind": kind, "transform": "log_square"}],
            **({"on_bad_rows": "skip"} if skip else {})}
    text = f"label,a,x\n1,u,1e39\n0,v,{refused}\n1,w,{kept}\n0,u,-1e300\n1,v,1.6\n"
    code, err = prepare(tmp_path, capsys, data, text)
    if not skip:
        assert code == 2 and err == f"ctr: error: {tmp_path / 'rows.csv'}:3: column 'x': {message}"
        return
    assert code == 0, err
    entry = next((tmp_path / "cache" / "data").glob("*/report.json")).parent
    assert yaml.safe_load((entry / "report.json").read_text())["splits"]["train"]["rows"] == 3
    if kind == "numeric":  # floor(ln(1e39)^2) = 8064, round(1.6) = 2
        assert sorted(pq.read_table(entry / "train").column("x").to_pylist()) == [np.float32(-3.4e38), 2.0, 8064.0]
    else:
        assert sorted(pq.read_table(entry / "vocab" / "x.parquet").column("token").to_pylist()) == [kept, "2", "8064"]


def test_a_libsvm_index_past_int64_is_read_as_its_token_or_unknown_to_featindex(tmp_path, capsys):
    """An index of 20 digits was a traceback (pyarrow's int64 cast); it is a token of plain
    libSVM, and an index featindex lacks."""
    line = "0 4:1\n1 99999999999999999999:1\n"
    code, err = prepare(tmp_path, capsys, {"dataset": "libsvm"}, line, name="rows.svm")
    assert code == 0, err
    (tmp_path / "featindex.txt").write_text("f:a\t4\n")
    data = {"dataset": "libsvm", "featindex": str(tmp_path / "featindex.txt"), "cache_dir": str(tmp_path / "cache2")}
    code, err = prepare(tmp_path, capsys, data, line, name="rows.svm")
    assert code == 2 and err.endswith("rows.svm:2: an index is not in featindex"), err
