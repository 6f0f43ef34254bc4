import numpy as np
import pyarrow as pa
import pytest

from ctr.datasets import prepare
from ctr.datasets.movielens import MovieLensConfig, MovieLensDataset
from ctr.errors import DataError
from ctr.recipe import SplitConfig, recipe_from_dict
from ctr.schema import FeatureSpec
from tests.conftest import SHARED_DATA

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"


def write_movielens(folder, ratings):
    folder.mkdir(exist_ok=True)
    (folder / "ml.inter").write_text(INTER + "".join(f"{u}\t{i}\t{r}\t88{k}\n" for k, (u, i, r) in enumerate(ratings)))
    (folder / "ml.user").write_text(USER + "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n")
    (folder / "ml.item").write_text(ITEM + "10\tToy Story\t1995\tAnimation Children's Comedy\n20\tHeat\t1995\tAction\n")
    return folder


def all_rows(source):
    return {split: pa.Table.from_batches(list(stream())) for split, stream in source.streams().items()}


def test_ratings_become_labels_three_dropped_side_files_joined(tmp_path):
    ratings = [(1, 10, 5), (1, 20, 3), (2, 10, 1), (2, 20, 4), (1, 10, 2)]
    source = MovieLensDataset(MovieLensConfig(path=str(write_movielens(tmp_path / "ml", ratings)), split=SplitConfig(valid=0.0, test=0.0)))
    rows = pa.Table.from_batches(list(source.streams()["train"]()))
    assert rows.column("label").to_pylist() == ["1", "0", "1", "0"]  # the rating of 3 is gone
    assert rows.column("gender").to_pylist() == ["M", "F", "F", "M"]
    assert rows.column("class").to_pylist()[0] == "Animation Children's Comedy"
    assert rows.column("__line__").to_pylist() == [2, 4, 5, 6]
    names = [f.name for f in source.default_features()]
    assert names == ["user_id", "item_id", "age", "gender", "occupation", "zip", "release_year", "genres"]
    genres = source.default_features()[-1]
    assert genres.kind == "sequence" and genres.splitter == " " and genres.source == "class"


def test_split_is_fixed_by_the_split_seed_not_recipe_seed(tmp_path):
    ratings = [(1 + k % 2, 10 + 10 * (k % 2), 5) for k in range(400)]
    folder = write_movielens(tmp_path / "ml", ratings)
    lines = lambda seed: {s: t.column("__line__").to_pylist() for s, t in all_rows(MovieLensDataset(MovieLensConfig(path=str(folder), split=SplitConfig(seed=seed)))).items()}  # noqa: E731
    first, again, other = lines(1), lines(1), lines(2)
    assert first == again and first != other
    assert sorted(sum(first.values(), [])) == list(range(2, 402))
    assert 0.7 < len(first["train"]) / 400 < 0.9


def test_unreadable_rating_is_a_row_error_with_its_line(tmp_path):
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, "x")])
    raw = {"data": {"dataset": "movielens", "path": str(folder), "cache_dir": str(tmp_path / "c")}}
    recipe = recipe_from_dict(raw)
    with pytest.raises(DataError, match=r"ml\.inter:3: rating 'x' is not a number"):
        prepare(recipe.data, progress=False)


@pytest.mark.parametrize("rating, problem", [(" 4 ", None), ("", "rating is missing")])
def test_a_rating_with_blanks_is_read_and_an_empty_one_is_a_row_error(tmp_path, rating, problem):
    """A rating with blanks around it was a traceback (pyarrow's cast of ' 4 '), an empty
    one left its row out silently, as a rating of 3."""
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, rating), (1, 20, 1)])
    source = MovieLensDataset(MovieLensConfig(path=str(folder), split=SplitConfig(valid=0.0, test=0.0)))
    rows = pa.Table.from_batches(list(source.streams()["train"]()))
    assert rows.column("__line__").to_pylist() == [2, 3, 4]
    assert rows.column("__problem__").to_pylist()[1] == problem
    assert rows.column("label").to_pylist()[1] == (None if problem else "1")


def test_path_may_name_any_of_the_files_and_a_missing_folder_is_an_error(tmp_path):
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5)])
    assert MovieLensDataset(MovieLensConfig(path=str(folder / "ml.item"))).inter == folder / "ml.inter"
    with pytest.raises(DataError, match="data.path: .* does not exist"):
        MovieLensDataset(MovieLensConfig(path=str(tmp_path / "nowhere")))


def test_the_folder_or_any_one_of_its_files_keys_the_same_entry(tmp_path):
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5)])
    keys = [MovieLensDataset(MovieLensConfig(path=str(path))).fingerprint() for path in
            (folder, folder / "ml.inter", folder / "ml.item")]
    assert keys[1] == keys[0] and keys[2] == keys[0]


def test_the_input_paths_of_one_named_file_are_all_three(tmp_path):
    """data.path naming the .item file reads the .inter and .user beside it too: all three are
    inputs (an --out of predict or export naming one of them would replace training rows)."""
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5)])
    paths = MovieLensConfig(path=str(folder / "ml.item")).input_paths()
    assert set(paths.values()) == {folder / "ml.inter", folder / "ml.item", folder / "ml.user"}
    assert paths["data.path's .user file"] == folder / "ml.user"


@pytest.mark.skipif(not (SHARED_DATA / "movielens").is_dir(), reason="needs ../shared/data/movielens (real MovieLens-100K)")
def test_movielens_100k_as_ctr(tmp_path):
    raw = {"data": {"dataset": "movielens", "path": str(SHARED_DATA / "movielens"), "cache_dir": str(tmp_path)}}
    recipe = recipe_from_dict(raw)
    prepared = prepare(recipe.data, progress=False)
    splits = prepared.report["splits"]
    total = sum(s["rows"] for s in splits.values())
    positives = sum(s["rows"] * s["positive_rate"] for s in splits.values())
    assert total == 72_855 and round(positives) == 55_375
    assert np.isclose(splits["train"]["rows"] / total, 0.8, atol=0.01)
    features = {f["name"]: f for f in prepared.report["features"]}
    assert features["gender"]["vocab_size"] == 2 + 2 and features["occupation"]["vocab_size"] == 2 + 21
    assert 1.5 < features["genres"]["values_per_row"] < 3


def write_pairs(path, ratings, rated=True):
    """An ``.inter`` file of (user, item, rating) rows, its rating column left out unless ``rated``."""
    path.parent.mkdir(exist_ok=True)
    header = INTER if rated else INTER.replace("rating:float\t", "")
    rows = [f"{u}\t{i}\t{r}\t88{k}\n" if rated else f"{u}\t{i}\t88{k}\n" for k, (u, i, r) in enumerate(ratings)]
    path.write_text(header + "".join(rows))
    return path


def scoring(config):
    """The source of ``config`` reading rows to score (as ``encode_with_schema`` sets it)."""
    source = MovieLensDataset(config)
    source.optional_columns = frozenset({"label"})
    return source


def test_rows_to_score_are_every_row_in_file_order_as_one_stream(tmp_path):
    """Rows to score came out in the order of the split's streams (train, valid, test), and
    without a rating column they were refused: every row is one stream, in file order."""
    ratings = [(1 + k % 2, 10 * (1 + k % 2), (5, 1, 3)[k % 3]) for k in range(40)]
    folder = write_movielens(tmp_path / "ml", ratings)
    source = scoring(MovieLensConfig(path=str(folder)))
    rated = all_rows(source)
    assert list(rated) == ["all"]
    threes = [k for k in range(40) if k % 3 == 2]
    assert rated["all"].column("__line__").to_pylist() == [k + 2 for k in range(40) if k not in threes]
    assert rated["all"].column("label").to_pylist()[:2] == ["1", "0"] and source.left_out_rows().tolist() == threes
    source = scoring(MovieLensConfig(path=str(write_pairs(tmp_path / "new" / "ml.inter", ratings, rated=False))))
    unrated = all_rows(source)["all"]
    assert unrated.column("__line__").to_pylist() == list(range(2, 42)) and "label" not in unrated.column_names
    assert source.left_out_rows() is None


def test_rows_to_score_without_side_files_read_the_trainings(tmp_path):
    """A new .inter without .user / .item beside it failed on the first absent attribute."""
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5)])
    trained = MovieLensConfig(path=str(folder))
    pairs = write_pairs(tmp_path / "new" / "pairs.inter", [(2, 20, 5), (1, 10, 1)])
    source = scoring(trained.reading(pairs))
    assert (source.user, source.item) == (folder / "ml.user", folder / "ml.item")
    rows = all_rows(source)["all"]
    assert rows.column("gender").to_pylist() == ["F", "M"] and rows.column("release_year").to_pylist() == ["1995"] * 2
    (tmp_path / "new" / "pairs.user").write_text(USER + "1\t30\tX\twriter\t1\n2\t40\tY\tartist\t2\n")
    rows = all_rows(scoring(trained.reading(pairs)))["all"]
    assert rows.column("gender").to_pylist() == ["Y", "X"] and rows.column("class").to_pylist()[0] == "Action"
    gone = MovieLensConfig(path=str(tmp_path / "gone"))
    assert "gender" in all_rows(scoring(gone.reading(pairs)))["all"].column_names  # the .user beside is read
    (tmp_path / "new" / "pairs.user").unlink()
    assert scoring(gone.reading(pairs)).user is None  # a run without side files scores bare pairs


def test_scored_rows_leave_out_ratings_of_3_and_skipped_rows_by_input_row(tmp_path):
    """The input rows that scores come from: ratings of 3 (no label) and bad rows that
    ``on_bad_rows: skip`` drops are both left out, numbered over the file's rows."""
    from ctr.datasets.preprocess import encode_with_schema

    folder = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, 1), (1, 20, 4), (2, 10, 2)])
    raw = {"data": {"dataset": "movielens", "path": str(folder), "cache_dir": str(tmp_path / "c"),
                    "on_bad_rows": "skip", "split": {"valid": 0.0, "test": 0.0}}}
    config = recipe_from_dict(raw).data
    prepared = prepare(config, progress=False)
    new = write_movielens(tmp_path / "new", [(1, 10, 3), (2, 20, 5), (1, 10, "x"), (1, 20, 3), (2, 10, 1)])
    encoded = encode_with_schema(config.reading(new), prepared.root, tmp_path / "out", None, progress=False)
    assert encoded.numbered and encoded.labelled and encoded.tally.rows == 2
    assert encoded.skipped_rows.tolist() == [0, 2, 3] and encoded.input_rows(0, 2).tolist() == [1, 4]


def test_a_side_file_naming_a_user_twice_or_no_user_is_one_line(tmp_path):
    """A user on two lines of the .user file repeated each of that user's ratings (more rows
    than the file's: scores no longer lined up with it); a .user without ``user_id`` failed in
    the join with an Arrow traceback."""
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, 1)])
    (folder / "ml.user").write_text(USER + "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n1\t25\tM\twriter\t1\n")
    with pytest.raises(DataError, match=r"ml\.user:4: user_id '1' is on line 2 too; name each once$"):
        all_rows(MovieLensDataset(MovieLensConfig(path=str(folder))))
    (folder / "ml.user").write_text("id:token\tage:token\n1\t24\n")
    with pytest.raises(DataError, match=r"ml\.user:1: column 'user_id' is absent \(it has: id, age\)"):
        all_rows(MovieLensDataset(MovieLensConfig(path=str(folder))))


@pytest.mark.parametrize("line, problem", [("2\t53\tF\n", "3 fields, expected 5"),
                                           (b"2\t53\tF\tcaf\xe9\t94043\n", "column 'occupation': not UTF-8 text")],
                         ids=["field-count", "not-utf8"])
def test_a_bad_line_of_a_side_file_is_one_line_not_a_user_without_attributes(tmp_path, line, problem):
    """A .user line the reader could not read left that user's attributes missing in every
    rating, silently (the problem rows of a side file were dropped)."""
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, 1)])
    start = (USER + "1\t24\tM\ttechnician\t85711\n").encode()
    (folder / "ml.user").write_bytes(start + (line if isinstance(line, bytes) else line.encode()))
    with pytest.raises(DataError, match=rf"ml\.user:3: {problem}$"):
        list(MovieLensDataset(MovieLensConfig(path=str(folder))).streams()["train"]())


def test_bytes_that_are_not_utf8_in_a_side_file_column_no_feature_reads_are_no_error(tmp_path):
    """A Latin-1 title in the .item file stopped the preparation of features that read only
    its genres; the same byte in a column a feature reads is the file's line."""
    folder = write_movielens(tmp_path / "ml", [(1, 10, 5), (2, 20, 1)])
    (folder / "ml.item").write_bytes((ITEM + "10\tCaf\xe9\t1995\tComedy\n20\tHeat\t1995\tAction\n").encode("latin-1"))
    source = MovieLensDataset(MovieLensConfig(path=str(folder), split=SplitConfig(valid=0.0, test=0.0)))
    rows = pa.Table.from_batches(list(source.streams()["train"]()))
    assert rows.column("class").to_pylist() == ["Comedy", "Action"] and "movie_title" not in rows.column_names
    title = MovieLensConfig(path=str(folder), features=[FeatureSpec(name="title", source="movie_title")])
    with pytest.raises(DataError, match=r"ml\.item:2: column 'movie_title': not UTF-8 text$"):
        all_rows(MovieLensDataset(title))


def test_rows_to_score_that_are_no_ratings_file_name_the_input_not_data_path(tmp_path):
    """``ctr predict RUN new.tsv`` of a movielens run said ``data.path: no ratings file ...``:
    the file came from the command line, not from data.path."""
    from ctr.errors import UserError
    from ctr.train.saved import encode_rows

    recipe = recipe_from_dict({"data": {"dataset": "movielens", "path": str(write_movielens(tmp_path / "ml", []))}})
    rows = tmp_path / "new.tsv"
    rows.write_text(INTER)
    with pytest.raises(UserError) as err:
        encode_rows(None, recipe, tmp_path / "out", rows)
    assert str(err.value) == f"no ratings file new.inter beside {rows}"


def test_gzip_ratings_and_side_files_read_as_their_plain_copies(tmp_path):
    """``ml.inter.gz`` named ``ml.inter.inter`` as its ratings file (and was not found in a
    folder), and its ``.user.gz`` / ``.item.gz`` were not read."""
    import gzip

    plain = write_movielens(tmp_path / "plain", [(1, 10, 5), (2, 20, 1), (1, 20, 4)])
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in ("ml.inter", "ml.user", "ml.item"):
        (packed / f"{name}.gz").write_bytes(gzip.compress((plain / name).read_bytes()))
    expected = _train_rows(MovieLensDataset(MovieLensConfig(path=str(plain), split=SplitConfig(valid=0.0, test=0.0))))
    assert expected.num_rows == 3 and expected.column("gender").to_pylist() == ["M", "F", "M"]
    for path in (packed, packed / "ml.inter.gz", packed / "ml.item.gz"):
        source = MovieLensDataset(MovieLensConfig(path=str(path), split=SplitConfig(valid=0.0, test=0.0)))
        assert (source.inter, source.user, source.item) == tuple(packed / f"ml.{s}.gz" for s in ("inter", "user", "item"))
        assert _train_rows(source).equals(expected)
    paths = MovieLensConfig(path=str(packed / "ml.item.gz")).input_paths()  # all three, each by its own key
    kinds = ("inter", "user", "item")
    assert [paths[f"data.path's .{kind} file"] for kind in kinds] == [packed / f"ml.{kind}.gz" for kind in kinds]


def _train_rows(source):
    return pa.Table.from_batches(list(source.streams()["train"]()))
