import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctr.datasets import prepare
from ctr.datasets.avazu import AvazuDataset, AvazuConfig
from ctr.datasets.criteo import CriteoConfig, CriteoDataset
from ctr.datasets.tabular import CsvConfig, CsvDataset
from ctr.datasets.libsvm import (NO_DELIMITER, FieldIndex, IPinYouConfig, IPinYouDataset, Layout, LibSVMConfig,
                                  LibSVMDataset, parse_rows)
from ctr.datasets.text import TextFormat, read_delimited
from ctr.errors import DataError
from ctr.recipe import recipe_from_dict
from ctr.schema import FeatureSpec
from tests.conftest import SHARED_DATA

DAC_ROW = "1\t" + "\t".join(str(i) for i in range(13)) + "\t" + "\t".join(f"{i:08x}" for i in range(26))


def table(batches):
    return pa.Table.from_batches(list(batches))


def test_blocks_keep_line_numbers_across_boundaries(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(1000)) + "7,last-without-newline")
    rows = table(read_delimited(path, TextFormat(["a", "b"], header=True), block_bytes=100))
    assert rows.num_rows == 1001
    assert rows.column("__line__").to_pylist() == list(range(2, 1003))
    assert rows.column("b").to_pylist()[-1] == "last-without-newline"


@pytest.mark.parametrize("last", ["5,6", "   ", "\r"])
def test_a_file_without_its_last_newline_is_cut_as_it_is_with_it(tmp_path, last):
    """The last line of a file without its newline was a block of its own (one more batch,
    another split for its row), and a last line of blanks was dropped (with its newline, a
    bad row); only a last ``\\r`` is blank, as ``\\r\\n`` is."""
    lines = "a,b\n" + "".join(f"{i},x{i}\n" for i in range(6)) + last
    ended, cut = tmp_path / "ended.csv", tmp_path / "cut.csv"
    ended.write_text(lines + "\n", newline="")
    cut.write_text(lines, newline="")
    for size in range(1, len(lines) + 3):
        read = [[b.to_pylist() for b in read_delimited(path, TextFormat(["a", "b"], header=True), block_bytes=size)
                 if b.num_rows] for path in (ended, cut)]  # a block of blank lines only is a batch of no rows
        assert read[1] == read[0], size
    assert sum(map(len, read[0])) == 6 + (last != "\r")


def test_libfm_default_fields_are_read_from_a_last_line_without_its_newline(tmp_path):
    """A short file's first MiB (where its default fields are read) left out its last line
    when it lacked its newline: a field first seen there made it a bad row."""
    path = tmp_path / "train.txt"
    path.write_text("1 0:1:1 1:5:1\n0 0:1:1 2:8:1")
    rows = table(LibSVMDataset(LibSVMConfig(path=str(path))).streams()["all"]())
    assert rows.column("__problem__").null_count == rows.num_rows == 2 and rows.column("2").to_pylist() == [None, "8"]


def test_wrong_field_count_becomes_a_row_problem_at_its_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("1,2\n3,4,5\n6,7\n\"8,9\",10\n11\n")
    rows = table(read_delimited(path, TextFormat(["a", "b"]), block_bytes=7))
    assert rows.column("__line__").to_pylist() == [1, 2, 3, 4, 5]
    assert rows.column("__problem__").to_pylist() == [None, "3 fields, expected 2", None, None, "1 fields, expected 2"]
    assert rows.column("a").to_pylist() == ["1", None, "6", "8,9", None]


def test_dac_rows_lacking_trailing_fields_are_padded(tmp_path):
    path = tmp_path / "day_0"
    short = DAC_ROW.rsplit("\t", 3)[0]  # 37 fields
    path.write_text(f"{DAC_ROW}\n{short}\n{DAC_ROW}\textra\n0\t1\t2\n")
    source = CriteoDataset(CriteoConfig(path=str(path)))
    rows = table(source.streams()["all"]())
    assert rows.column("C23").to_pylist()[:2] == [f"{22:08x}", f"{22:08x}"]
    assert rows.column("C24").to_pylist()[:2] == [f"{23:08x}", None]
    assert rows.column("C26").to_pylist()[:2] == [f"{25:08x}", None]
    assert rows.column("__problem__").to_pylist() == [None, None, "41 fields, expected 40", "3 fields, expected 40"]


def test_criteo_kaggle_csv_and_dac_give_the_same_columns(tmp_path):
    (tmp_path / "k").mkdir()
    kaggle = tmp_path / "k" / "train.csv"
    header = "Id,Label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
    kaggle.write_text(header + "\n10000000," + DAC_ROW.replace("\t", ",") + "\n")
    dac = tmp_path / "train.txt"
    dac.write_text(DAC_ROW + "\n")
    a = table(CriteoDataset(CriteoConfig(path=str(kaggle))).streams()["all"]())
    b = table(CriteoDataset(CriteoConfig(path=str(dac))).streams()["all"]())
    assert a.drop_columns(["__line__"]).equals(b.drop_columns(["__line__"]))
    assert a.column("__line__").to_pylist() == [2] and b.column("__line__").to_pylist() == [1]


def test_avazu_derives_hour_of_day_and_weekday(tmp_path):
    path = tmp_path / "train.csv"
    columns = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
    values = ",".join(["x"] * 21)
    path.write_text(f"{columns}\n1,0,14102117,{values}\n2,1,14102623,{values}\n3,1,1410,{values}\n")
    rows = table(AvazuDataset(AvazuConfig(path=str(path))).streams()["all"]())
    assert rows.column("hour_of_day").to_pylist()[:2] == ["17", "23"]
    assert rows.column("weekday").to_pylist()[:2] == ["1", "6"]  # 2014-10-21 Tuesday, 2014-10-26 Sunday
    assert rows.column("__problem__").to_pylist()[2] == "hour '1410' is not YYMMDDHH"


def prepared_from(tmp_path, dataset: str, train):
    """``train`` prepared as dataset ``dataset``, every row a training row: (data config, entry)."""
    raw = {"data": {"dataset": dataset, "path": str(train), "cache_dir": str(tmp_path / "c"),
                    "split": {"valid": 0.0, "test": 0.0}}}
    config = recipe_from_dict(raw).data
    return config, prepare(config, progress=False)


def assert_scored_as_trained(tmp_path, config, prepared, test, rows: int) -> None:
    """``test``, rows without a label, encodes as the training rows it repeats."""
    from ctr.datasets.preprocess import encode_with_schema

    out = tmp_path / f"scored-{test.name}"
    encoded = encode_with_schema(config.reading(test), prepared.root, out, None, progress=False)
    assert not encoded.labelled and encoded.tally.rows == rows
    scored, trained = (pq.read_table(folder).drop_columns(["__label__"])
                       for folder in (out / "test", prepared.split_dir("train")))
    assert scored.equals(trained)


def test_avazu_rows_to_score_may_lack_the_click_column(tmp_path):
    """The Avazu release's test.csv has no ``click`` column: its rows are scored unlabelled,
    encoded with the ids training gave them (the reader demanded the column)."""
    columns = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
    rows = [(i, i % 2, f"141021{10 + i}", ",".join([f"v{i % 3}"] * 21)) for i in range(6)]
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text(columns + "\n" + "".join(f"{i},{c},{h},{v}\n" for i, c, h, v in rows))
    test.write_text(columns.replace("click,", "") + "\n" + "".join(f"{i},{h},{v}\n" for i, _, h, v in rows))
    assert_scored_as_trained(tmp_path, *prepared_from(tmp_path, "avazu", train), test, 6)


def test_criteo_rows_without_a_label_are_scored_and_refused_for_training(tmp_path):
    """DAC's test.txt (39 fields: no label) and Kaggle's test.csv (header Id,I1,..): scoring
    them read the 14th field, C1, as the count I13 ("not a number") or refused the header."""
    rows = ["\t".join([str(i % 2), *(str(i + j) for j in range(13)), *(f"{i % 3:08x}" for _ in range(26))])
            for i in range(6)]
    train, dac_test, kaggle_test = tmp_path / "train.txt", tmp_path / "test.txt", tmp_path / "test.csv"
    train.write_text("".join(f"{row}\n" for row in rows))
    dac_test.write_text("".join(row.split("\t", 1)[1] + "\n" for row in rows))
    header = "Id," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
    kaggle_test.write_text(header + "\n" + "".join(f"{60000000 + i}," + row.split("\t", 1)[1].replace("\t", ",") + "\n"
                                                   for i, row in enumerate(rows)))
    config, prepared = prepared_from(tmp_path, "criteo", train)
    for test in (dac_test, kaggle_test):
        assert_scored_as_trained(tmp_path, config, prepared, test, 6)
    for test, known_as in ((dac_test, "Criteo's test.txt"), (kaggle_test, "Kaggle's test.csv")):
        with pytest.raises(DataError, match=rf"^{test}:1: rows without a label \({known_as}\): they can be scored"):
            prepared_from(tmp_path, "criteo", test)


def test_criteo_dac_rows_without_a_label_may_lack_trailing_fields(tmp_path):
    """A test.txt whose first line lacks its trailing empty fields (as a labelled day file may,
    38 fields here) is rows without a label: it was read as labelled, C1 as the count I13."""
    rows = ["\t".join([str(i % 2), *(str(i + j) for j in range(13)), *(f"{i % 3:08x}" for _ in range(24)), "", ""])
            for i in range(6)]
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("".join(f"{row}\n" for row in rows))
    test.write_text("".join(row.split("\t", 1)[1].rstrip("\t") + "\n" for row in rows))
    assert_scored_as_trained(tmp_path, *prepared_from(tmp_path, "criteo", train), test, 6)


def write_featindex(folder):
    folder.mkdir(exist_ok=True)
    (folder / "featindex.txt").write_text("weekday:0\t0\nweekday:1\t1\ncity:9\t2\ncity:10\t3\nprice\t4\n")
    return folder / "featindex.txt"


def test_libsvm_fields_from_featindex(tmp_path):
    index = write_featindex(tmp_path / "ip")
    path = tmp_path / "ip" / "train.txt"
    path.write_text("0 1:1 2:1\n1 0:1 3:1\n0 0:1 0:1\n1 1:1 9:1\n")
    source = LibSVMDataset(LibSVMConfig(path=str(path), featindex=str(index)))
    assert [f.name for f in source.default_features()] == ["weekday", "city", "price"]
    rows = table(source.streams()["all"]())
    assert rows.column("weekday").to_pylist()[:2] == ["1", "0"]
    assert rows.column("city").to_pylist()[:2] == ["9", "10"]
    assert rows.column("__problem__").to_pylist()[2:] == ["field 'weekday' appears more than once", "an index is not in featindex"]


def test_a_featindex_giving_an_index_twice_is_one_line(tmp_path):
    """Two lines of one index (two featindex files joined) named it by the last, silently: the
    rows of the first field's value read as the other field's."""
    index = write_featindex(tmp_path / "ip")
    index.write_text(index.read_text() + "city:11\t1\n")
    with pytest.raises(DataError, match=rf"^{index}:6: index 1 is on line 2 too; name each index once$"):
        FieldIndex.read(index)


def test_libfm_fields_numeric_values_and_plain_libsvm(tmp_path):
    libfm = tmp_path / "fm.txt"
    libfm.write_text("1 0:5:1 1:7:1 2:9:0.25\n0 0:6:1 2:9:3\n")
    features = [FeatureSpec(name="a", source="0"), FeatureSpec(name="b", source="1"),
                FeatureSpec(name="x", kind="numeric", source="2")]
    source = LibSVMDataset(LibSVMConfig(path=str(libfm), features=features))
    rows = table(source.streams()["all"]())
    assert rows.column("0").to_pylist() == ["5", "6"] and rows.column("1").to_pylist() == ["7", None]
    assert rows.column("2").to_pylist() == [0.25, 3.0]
    plain = tmp_path / "svm.txt"
    plain.write_text("1 3:1 8:1 9:1\n0 4:1\n")
    source = LibSVMDataset(LibSVMConfig(path=str(plain)))
    assert source.default_features()[0].kind == "sequence"
    assert table(source.streams()["all"]()).column("features").to_pylist() == [["3", "8", "9"], ["4"]]


def test_a_libsvm_line_without_its_label_says_so(tmp_path):
    """A line that starts with a feature (a label dropped from rows to score) read its first
    token as the label: "label 'label' is '3:1', not 0 or 1"."""
    plain = tmp_path / "svm.txt"
    plain.write_text("1 3:1 8:1\n3:1 9:1\n")
    rows = table(LibSVMDataset(LibSVMConfig(path=str(plain))).streams()["all"]())
    assert rows.column("__problem__").to_pylist() == [
        None, "the line starts with a feature, not its label (rows to score need one too: 0 where it is unknown)"]


def test_generic_csv_sequence_column_shared_table(tmp_path):
    path = tmp_path / "taobao.csv"
    path.write_text("clk,item,hist\n1,i1,i2^i3^i1\n0,i2,i1\n1,i3,\n")
    raw = {"data": {"dataset": "csv", "path": str(path), "label": "clk", "cache_dir": str(tmp_path / "c"),
                    "split": {"valid": 0.0, "test": 0.0},
                    "features": [{"name": "item"}, {"name": "hist", "kind": "sequence", "share_with": "item",
                                                    "max_len": 2, "pooling": "none", "padding": "left"}]}}
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    hist = prepared.schema.feature("hist")
    assert hist.table == "item" and hist.vocab_size == prepared.schema.feature("item").vocab_size
    shard = pq.read_table(next((prepared.root / "train").glob("*.parquet")))
    item_ids = dict(zip(shard.column("item").to_pylist(), ["i1", "i2", "i3"]))
    assert [[item_ids[i] for i in h] for h in shard.column("hist").to_pylist()] == [["i3", "i1"], ["i1"], []]


def test_a_csv_header_loses_recbole_type_suffixes_only(tmp_path):
    """Every ``:...`` of a header name was cut: ``ctr:1d`` and ``ctr:7d`` were both ``ctr`` (a
    column named twice, which no recipe could read), ``geo:lat`` was ``geo``."""
    path = tmp_path / "rows.csv"
    path.write_text("y,ctr:1d,ctr:7d,user_id:token,tags:token_seq,price:float\n1,a,b,u,t,1\n")
    source = CsvDataset(CsvConfig(path=str(path), label="y", features=[FeatureSpec(name="ctr:7d")]))
    assert source.columns() == ["y", "ctr:1d", "ctr:7d", "user_id", "tags", "price"]
    assert table(source.streams()["all"]()).column("ctr:7d").to_pylist() == ["b"]


def test_parquet_dataset_reads_typed_and_list_columns(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"y": [1, 0, 1], "price": [1.5, None, 3.0], "tags": [["a"], [None], ["a", None, "b"]],
                             "unused": [0, 0, 0]}), path)
    raw = {"data": {"dataset": "parquet", "path": str(path), "label": "y", "cache_dir": str(tmp_path / "c"),
                    "split": {"valid": 0.0, "test": 0.0},
                    "features": [{"name": "price", "kind": "numeric"}, {"name": "tags", "kind": "sequence"}]}}
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    features = {f["name"]: f for f in prepared.report["features"]}
    assert features["price"]["missing_rate"] == pytest.approx(1 / 3)
    assert features["tags"]["values_per_row"] == pytest.approx(1.0)


@pytest.mark.parametrize("given, carved", [("test", "valid"), ("valid", "test")])
def test_a_split_file_gives_its_split_and_the_other_is_carved_from_training(tmp_path, given, carved):
    for name, rows in (("train", 40), (given, 7)):
        (tmp_path / f"{name}.csv").write_text("y,a\n" + "".join(f"{i % 2},v{i}\n" for i in range(rows)))
    raw = {"data": {"dataset": "csv", "path": str(tmp_path / "train.csv"), f"{given}_path": str(tmp_path / f"{given}.csv"),
                    "label": "y", "features": [{"name": "a"}], "cache_dir": str(tmp_path / "c"),
                    "split": {"valid": 0.25, "test": 0.25}}}
    recipe = recipe_from_dict(raw)
    splits = prepare(recipe.data, progress=False).report["splits"]
    assert splits[given]["rows"] == 7
    assert splits["train"]["rows"] + splits[carved]["rows"] == 40 and 3 <= splits[carved]["rows"] <= 18


needs_criteo = pytest.mark.skipif(not (SHARED_DATA / "criteo").is_dir(), reason="needs ../shared/data/criteo (real Criteo samples)")


@needs_criteo
def test_real_criteo_samples():
    kaggle = table(CriteoDataset(CriteoConfig(path=str(SHARED_DATA / "criteo" / "kaggle_train_2k.csv"))).streams()["all"]())
    dac = table(CriteoDataset(CriteoConfig(path=str(SHARED_DATA / "criteo" / "dac_train_999.txt"))).streams()["all"]())
    assert kaggle.num_rows == 1999 and dac.num_rows == 1000
    for rows in (kaggle, dac):
        assert rows.column("__problem__").null_count == rows.num_rows
        assert set(rows.column("label").to_pylist()) == {"0", "1"}
    assert dac.column("C26").null_count > 0  # padded rows


@pytest.mark.skipif(not (SHARED_DATA / "avazu").is_dir(), reason="needs ../shared/data/avazu (real Avazu sample)")
def test_real_avazu_sample():
    rows = table(AvazuDataset(AvazuConfig(path=str(SHARED_DATA / "avazu" / "train_3k.csv"))).streams()["all"]())
    assert rows.num_rows == 2994 and rows.column("__problem__").null_count == rows.num_rows
    assert set(rows.column("hour_of_day").to_pylist()) <= {f"{h:02d}" for h in range(24)} | {str(h) for h in range(24)}


@pytest.mark.skipif(not (SHARED_DATA / "ipinyou").is_dir(), reason="needs ../shared/data/ipinyou (real iPinYou sample)")
def test_real_ipinyou_splits_and_fields():
    source = IPinYouDataset(IPinYouConfig(path=str(SHARED_DATA / "ipinyou")))
    assert len(source.default_features()) == 16
    streams = source.streams()
    assert set(streams) == {"train", "test"}
    test = table(streams["test"]())
    assert test.num_rows == 21_150 and sum(int(v) for v in test.column("label").to_pylist()) == 50
    assert test.column("__problem__").null_count == test.num_rows
    assert test.column("weekday").null_count == 0


def test_ipinyou_rows_to_score_are_read_alone_with_the_training_featindex(tmp_path):
    """``ctr predict`` of an iPinYou run reads INPUT alone: the release's test file scored its
    rows twice (the folder's test file was added as a test split), and a file in another
    folder was refused (no train.fm.txt beside it)."""
    release, elsewhere = tmp_path / "release", tmp_path / "elsewhere"
    release.mkdir(), elsewhere.mkdir()
    (release / "featindex.fm.txt").write_text("weekday:1\t0\nweekday:2\t1\nhour:5\t2\nhour:6\t3\n")
    (release / "train.fm.txt").write_text("".join(f"{i % 2} {i % 2}:1 {2 + i % 2}:1\n" for i in range(6)))
    (release / "test.fm.txt").write_text("1 0:1 3:1\n0 1:1 2:1\n0 1:1 3:1\n")
    (elsewhere / "rows.fm.txt").write_text("1 0:1 3:1\n")
    trained = IPinYouConfig(path=str(release))
    named = IPinYouConfig(path=str(release / "train.fm.txt")).input_paths()  # the test file and featindex are inputs too
    assert set(named.values()) >= {release / "test.fm.txt", release / "featindex.fm.txt"}
    for scored, rows in ((release / "test.fm.txt", 3), (release / "train.fm.txt", 6), (elsewhere / "rows.fm.txt", 1)):
        streams = IPinYouDataset(trained.reading(scored)).streams()
        assert sum(table(stream()).num_rows for stream in streams.values()) == rows, scored


def test_ipinyou_release_folder_to_score_is_refused_naming_its_test_file(tmp_path):
    """``ctr predict RUN RELEASE``: the folder's files were all read as rows, featindex.fm.txt
    first ("the line starts with a feature" at its line 1; skipped, train and test scored
    together). A release folder is refused, naming the file to give."""
    release = tmp_path / "release"
    release.mkdir()
    (release / "featindex.fm.txt").write_text("weekday:1\t0\nweekday:2\t1\n")
    (release / "train.fm.txt").write_text("".join(f"{i % 2} {i % 2}:1\n" for i in range(4)))
    (release / "test.fm.txt").write_text("1 0:1\n")
    with pytest.raises(DataError, match=f"^{release}: an iPinYou release folder .*; give the file to score, "
                                        f"e.g. {release / 'test.fm.txt'}$"):
        IPinYouConfig(path=str(release)).reading(release)
    copied = tmp_path / "copied"  # the featindex beside new rows, no release: no test.fm.txt to name
    copied.mkdir()
    (copied / "featindex.fm.txt").write_bytes((release / "featindex.fm.txt").read_bytes())
    (copied / "new.fm.txt").write_text("1 0:1\n")
    with pytest.raises(DataError) as err:
        IPinYouConfig(path=str(release)).reading(copied)
    assert str(err.value) == (f"{copied}: holds featindex.fm.txt, whose lines are no rows; give the file to score, "
                              f"e.g. {copied / 'new.fm.txt'}")
    rows = release / "test.fm.txt"  # with the training's release gone, it named that folder alone, as if INPUT
    with pytest.raises(DataError, match=f"^{rows}: its indices are named by the featindex of the run's release, not "
                                        f"found \\(data.path: {tmp_path / 'gone'} does not exist\\)$"):
        IPinYouConfig(path=str(tmp_path / "gone")).reading(rows)


def test_libsvm_folder_holding_its_featindex_reads_the_rows_only(tmp_path):
    """``data.featindex`` inside the ``data.path`` folder was read as rows too (every line a
    bad row: "the line starts with a feature")."""
    (tmp_path / "featindex.txt").write_text("a:x\t0\na:y\t1\n")
    (tmp_path / "rows.txt").write_text("1 0:1\n0 1:1\n")
    source = LibSVMDataset(LibSVMConfig(path=str(tmp_path), featindex=str(tmp_path / "featindex.txt")))
    rows = table(source.streams()["all"]())
    assert rows.column("a").to_pylist() == ["x", "y"] and rows.column("__problem__").null_count == 2
    release = tmp_path / "release"
    release.mkdir()
    for name, text in (("featindex.fm.txt", "a:x\t0\n"), ("train.fm.txt", "1 0:1\n"), ("test.fm.txt", "0 0:1\n")):
        (release / name).write_text(text)
    with pytest.raises(DataError, match=f"^data.path: {release / 'featindex.fm.txt'} is the featindex .*, not a file of rows$"):
        IPinYouDataset(IPinYouConfig(path=str(release)).reading(release / "featindex.fm.txt"))


def test_a_gzip_file_reads_as_its_plain_copy(tmp_path):
    import gzip

    text = "y,a,n\n" + "".join(f"{i % 2},v{i % 7},{i * 0.5}\n" for i in range(300))
    (tmp_path / "rows.csv").write_text(text)
    (tmp_path / "rows.csv.gz").write_bytes(gzip.compress(text.encode()))
    tables = []
    for name in ("rows.csv", "rows.csv.gz"):
        raw = {"data": {"dataset": "csv", "path": str(tmp_path / name), "label": "y", "cache_dir": str(tmp_path / name[:-4]),
                        "features": [{"name": "a"}, {"name": "n", "kind": "numeric"}]}}
        prepared = prepare(recipe_from_dict(raw).data, progress=False)
        tables.append([pq.read_table(f) for split in ("train", "valid", "test")
                       for f in sorted(prepared.split_dir(split).glob("*.parquet"))])
    assert len(tables[0]) >= 3 and all(a.equals(b) for a, b in zip(*tables, strict=True))


def test_text_of_another_compression_is_refused_naming_it(tmp_path):
    """A bzip2 or xz file read as text was "not a text file (its first line holds NUL bytes)"
    or a row per line that is not UTF-8."""
    import bz2
    import lzma

    for name, pack in (("rows.csv.bz2", bz2.compress), ("rows.csv.xz", lzma.compress)):
        (tmp_path / name).write_bytes(pack(b"y,a\n1,x\n0,y\n"))
        source = CsvDataset(CsvConfig(path=str(tmp_path / name), label="y", features=[FeatureSpec(name="a")]))
        kind = "bzip2" if name.endswith("bz2") else "xz"
        with pytest.raises(DataError, match=f"^{tmp_path / name}: {kind} data; text files are read plain or gzip"):
            table(source.streams()["all"]())
    (tmp_path / "plain.csv").write_text("y,a\n1,BZh91AY&SY\n")  # the bytes, inside text
    plain = CsvDataset(CsvConfig(path=str(tmp_path / "plain.csv"), label="y", features=[FeatureSpec(name="a")]))
    assert table(plain.streams()["all"]()).column("a").to_pylist() == ["BZh91AY&SY"]


def test_libfm_field_absent_from_a_file_or_block_is_missing_there(tmp_path):
    """A sparse field that no row of a test file (or of a 16 MiB block) holds was refused as
    an absent column (past the first block, it escaped as a KeyError); it is missing there."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("1 0:1:1 1:5:1\n0 0:2:1 1:6:1\n1 0:1:1\n")
    test.write_text("1 0:1:1\n0 0:2:1\n")
    source = LibSVMDataset(LibSVMConfig(path=str(train), test_path=str(test)))
    rows = table(source.streams()["test"]())
    assert rows.column("1").to_pylist() == [None, None] and rows.column("__problem__").null_count == 2
    block = next(read_delimited(test, TextFormat(["line"], NO_DELIMITER, quoting=False)))
    parsed = parse_rows(block, Layout(libfm=True), {"0": "categorical", "1": "sequence", "2": "numeric"})
    assert parsed.column("1").to_pylist() == [[], []] and parsed.column("2").to_pylist() == [None, None]


def test_libfm_fields_no_feature_reads_are_not_checked(tmp_path):
    """A numeric field beside the one-hot ones made every row bad ('has a value other than
    1') although no feature read it; a field read that the data lacks is still refused."""
    path = tmp_path / "fm.txt"
    path.write_text("1 0:1:1 1:5:0.5\n0 0:2:1 1:6:3\n")
    source = LibSVMDataset(LibSVMConfig(path=str(path), features=[FeatureSpec(name="a", source="0")]))
    rows = table(source.streams()["all"]())
    assert rows.column("0").to_pylist() == ["1", "2"] and rows.column("__problem__").null_count == 2
    assert "1" not in rows.column_names
    typo = LibSVMDataset(LibSVMConfig(path=str(path), features=[FeatureSpec(name="a", source="9")]))
    with pytest.raises(DataError, match=r"data.features \(a\): column '9' is absent from the first rows of .*fm.txt"):
        table(typo.streams()["all"]())


def _past_first_mib(head: str, tail: str) -> str:
    """Text whose first MiB (where a libsvm file's form and default fields are read) repeats
    ``head`` and whose last line is ``tail``."""
    return head * ((1 << 20) // len(head) + 1) + tail


def _problems(rows: pa.Table) -> dict[int, str]:
    """Line → problem of the rows that have one."""
    return {line: problem for line, problem in zip(rows.column("__line__").to_pylist(),
                                                   rows.column("__problem__").to_pylist()) if problem}


def test_a_row_of_the_other_form_past_the_first_rows_is_bad(tmp_path):
    """A libSVM row in a libFM file (or the reverse) past the first MiB was read with each
    field missing (or without features), silently; it is a bad row naming its line."""
    for head, tail, form in [("1 0:1:1 1:5:1\n", "0 7:1\n", "'field:index:value' (a libFM file"),
                             ("1 3:1 9:1\n", "0 0:7:1\n", "'index:value' (a libSVM file")]:
        path = tmp_path / "rows.txt"
        path.write_text(_past_first_mib(head, tail))
        rows = table(LibSVMDataset(LibSVMConfig(path=str(path))).streams()["all"]())
        assert _problems(rows) == {rows.num_rows: f"a feature is not {form}, as the first rows of {path} are)"}


def test_a_libfm_field_first_seen_past_the_first_rows_of_training_is_named(tmp_path):
    """Default libFM features are the fields of the first MiB of training rows: a training row
    holding another field lost it silently; it is a bad row telling to list the features. In a
    test file, or with the features listed, such a field is read by no one (no bad row)."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text(_past_first_mib("1 0:1:1 1:5:1\n", "0 0:1:1 2:8:1\n"))
    test.write_text("1 0:1:1 2:8:1\n")
    rows = table(LibSVMDataset(LibSVMConfig(path=str(train), test_path=str(test))).streams()["train"]())
    assert _problems(rows) == {rows.num_rows: f"field '2' is absent from the first rows of {train}, where the "
                                              "default features were read; list the features under data.features"}
    tested = table(LibSVMDataset(LibSVMConfig(path=str(train), test_path=str(test))).streams()["test"]())
    assert tested.column("0").to_pylist() == ["1"] and not _problems(tested)
    listed = [FeatureSpec(name="a", source="0"), FeatureSpec(name="b", source="1")]
    rows = table(LibSVMDataset(LibSVMConfig(path=str(train), features=listed)).streams()["all"]())
    assert not _problems(rows) and rows.column("1")[-1].as_py() is None


def test_rows_to_score_may_hold_a_libfm_field_the_run_does_not_read(tmp_path):
    """Scoring (``ctr predict``, ``ctr eval --data``) encodes with the run's saved features: a
    row holding a libFM field none of them reads is read without it, as in a test file, even
    past the first rows of the file scored and with the run's features its defaults (such a row
    was a bad row telling to list the features, which scoring has no recipe key for)."""
    from ctr.datasets.preprocess import encode_with_schema

    train, score = tmp_path / "train.txt", tmp_path / "score.txt"
    train.write_text("1 0:1:1 1:5:1\n0 0:2:1 1:6:1\n" * 4)
    score.write_text(_past_first_mib("1 0:1:1 1:5:1\n", "0 0:2:1 1:6:1 2:8:1\n"))
    config, prepared = prepared_from(tmp_path, "libsvm", train)
    encoded = encode_with_schema(config.reading(score), prepared.root, tmp_path / "out", None, progress=False)
    assert encoded.tally.rows == len(score.read_text().splitlines())
    last = pq.read_table(tmp_path / "out" / "test").slice(encoded.tally.rows - 1)
    first_train = pq.read_table(prepared.split_dir("train")).slice(1, 1)
    assert last.drop_columns(["__label__"]).equals(first_train.drop_columns(["__label__"]))


def test_rows_to_score_take_the_runs_fields_and_form(tmp_path):
    """Scoring a file that lacks one of the run's libFM fields (in its first rows or at all)
    was refused (``column '2' is absent from score.txt``) as its fields were sniffed from it:
    the run's fields are read, each missing where absent; a libSVM file scored by a libFM
    run is bad rows naming the run's form (its rows were read with every field missing)."""
    from ctr.datasets.preprocess import encode_with_schema

    train, score, svm = tmp_path / "train.txt", tmp_path / "score.txt", tmp_path / "svm.txt"
    train.write_text("1 0:1:1 1:5:1 2:8:1\n0 0:2:1 1:6:1 2:9:1\n" * 4)
    score.write_text("1 0:1:1 1:5:1\n0 0:2:1 1:6:1\n")
    svm.write_text("1 3:1 4:1\n")
    config, prepared = prepared_from(tmp_path, "libsvm", train)
    encoded = encode_with_schema(config.reading(score), prepared.root, tmp_path / "out", None, progress=False)
    scored, trained = (pq.read_table(folder).drop_columns(["__label__"])
                       for folder in (tmp_path / "out" / "test", prepared.split_dir("train")))
    assert encoded.tally.rows == 2 and scored.column("field_0").equals(trained.column("field_0").slice(0, 2))
    assert scored.column("field_2").to_pylist() == [1, 1]  # missing: the out-of-vocabulary id
    with pytest.raises(DataError, match=r"svm.txt:1: a feature is not 'field:index:value' \(a libFM file, as the rows "
                                        r"of the run's training are\)"):
        encode_with_schema(config.reading(svm), prepared.root, tmp_path / "out2", None, progress=False)


def test_a_featindex_is_a_path_of_the_recipe_made_absolute_in_a_run(tmp_path, monkeypatch):
    """``data.featindex`` was kept as given: a relative one made the run's predict fail from
    another folder ("data.featindex: ... does not exist"), keyed another cache entry than the
    same file named absolutely, and predict's --out could name it (and replace it)."""
    from ctr.train.rundir import _as_kept

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "featindex.txt").write_text("a:x\t0\na:y\t1\n")
    (tmp_path / "d" / "rows.txt").write_text("1 0:1\n0 1:1\n")
    absolute = LibSVMConfig(path=str(tmp_path / "d" / "rows.txt"), featindex=str(tmp_path / "d" / "featindex.txt"))
    monkeypatch.chdir(tmp_path)
    relative = LibSVMConfig(path="d/rows.txt", featindex="d/featindex.txt")
    assert LibSVMDataset(relative).fingerprint() == LibSVMDataset(absolute).fingerprint()
    assert relative.input_paths()["data.featindex"].resolve() == tmp_path / "d" / "featindex.txt"
    kept = _as_kept(recipe_from_dict({"data": {"dataset": "libsvm", "path": "d/rows.txt", "featindex": "d/featindex.txt"}}))
    assert kept["data"]["featindex"] == str(tmp_path / "d" / "featindex.txt")


def test_a_held_out_file_that_data_path_also_reads_is_refused(tmp_path):
    """``test_path`` inside the ``data.path`` folder (or the same file), and an ``ipinyou``
    data.path naming the release's test file: its rows were trained on and tested on, silently."""
    (tmp_path / "d").mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / "d" / name).write_text("label,a\n1,x\n0,y\n")
    features = [FeatureSpec(name="a")]
    advice = {"test": f"move it out of the data.path folder {tmp_path / 'd'}",  # data.path names no single files
              "valid": "name another file, or leave data.valid_path out to split data.path's rows"}
    for path, key in ((tmp_path / "d", "test"), (tmp_path / "d" / "train.csv", "valid")):
        held_out = tmp_path / "d" / ("test.csv" if key == "test" else "train.csv")
        with pytest.raises(DataError) as err:
            CsvDataset(CsvConfig(path=str(path), features=features, **{f"{key}_path": str(held_out)}))
        what = "tested" if key == "test" else "validated"
        assert str(err.value) == (f"data.{key}_path: {held_out} is read by data.path too (its rows would be trained "
                                  f"on and {what} on); {advice[key]}")
    shared = CsvDataset(CsvConfig(path=str(tmp_path / "d" / "train.csv"), features=features,
                                  valid_path=str(tmp_path / "d" / "test.csv"), test_path=str(tmp_path / "d" / "test.csv")))
    assert shared.split_files["valid"] == shared.split_files["test"]  # validation and test may share a file
    release = tmp_path / "release"
    release.mkdir()
    for name, text in (("featindex.fm.txt", "a:x\t0\n"), ("train.fm.txt", "1 0:1\n"), ("test.fm.txt", "0 0:1\n")):
        (release / name).write_text(text)
    with pytest.raises(DataError, match=f"^data.path: {release / 'test.fm.txt'} is the release's test file"):
        IPinYouDataset(IPinYouConfig(path=str(release / "test.fm.txt")))


def test_ipinyou_rows_to_score_are_read_alone_not_with_their_release(tmp_path):
    """Rows to score inside a release are read alone (with the featindex training read): the
    release's train file is no input of theirs, so predict's --out may name it."""
    from ctr.train.predict import _refuse_read_input

    for name in ("trained", "other"):
        (tmp_path / name).mkdir()
        for file, text in (("featindex.fm.txt", "a:x\t0\n"), ("train.fm.txt", "1 0:1\n"), ("test.fm.txt", "0 0:1\n")):
            (tmp_path / name / file).write_text(text)
    scored = IPinYouConfig(path=str(tmp_path / "trained")).reading(tmp_path / "other" / "test.fm.txt")
    assert set(scored.input_paths().values()) == {tmp_path / "other" / "test.fm.txt",
                                                   tmp_path / "trained" / "featindex.fm.txt"}
    _refuse_read_input(tmp_path / "other" / "train.fm.txt", tmp_path / "other" / "test.fm.txt",
                       IPinYouConfig(path=str(tmp_path / "trained")))
