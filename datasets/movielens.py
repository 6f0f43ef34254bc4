"""``movielens``: MovieLens ratings as a CTR dataset, the way AutoInt treats MovieLens-1M.

Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
Networks", CIKM 2019, §5.1: ratings above 3 are positive, ratings below 3 negative, ratings
of 3 are dropped. Features: user id, item id, the user's age, gender, occupation and zip
code, the movie's release year and its genres (a multi-valued feature).

Reads the RecBole atomic files (``<name>.inter``, ``<name>.user``, ``<name>.item``:
tab-separated with typed headers such as ``user_id:token``), as shipped for MovieLens-100K
and MovieLens-1M; ``data.path`` is the folder or any one of the files. The split is random
with a fixed seed (``data.split.seed``, independent of the recipe's seed) in the proportions
of ``data.split`` (8:1:1 by default).

Rows to score (``ctr predict``, ``ctr eval --data``) are every row of the ``.inter`` file, in
file order, as one stream; its ``rating`` column is optional then (without it every pair is
scored, unlabelled), and the ``.user`` / ``.item`` files it lacks are the training's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr.datasets.source import SPLITS, DatasetSource, RowStream, beside, gzip_too, plain_name, resolve_files
from ctr.datasets.text import (TextFormat, first_line_number, header_line, read_delimited, refuse_other_compression,
                               strip_types, to_batch)
from ctr.datasets.validate import LINE_COLUMN, PROBLEM_COLUMN, column_keys
from ctr.errors import DataError
from ctr.recipe import DataConfig
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec

POSITIVE_FROM, NEGATIVE_UP_TO = 4.0, 2.0
GENRE_COLUMNS = ("class", "genre", "genres")
CHUNK_ROWS = 65_536


@dataclass
class MovieLensConfig(DataConfig):
    """Options of the MovieLens dataset: the common ones (``split`` seeds and sizes its split).

    ``side_files`` is no recipe key: the ``.user`` and ``.item`` files read when none is beside
    the ratings file (``reading`` sets the training's, for rows to score).
    """

    side_files: tuple[str | None, str | None] = field(default=(None, None), init=False, repr=False)

    def input_paths(self) -> dict[str, Path]:
        """The recipe's paths and the ratings, ``.user`` and ``.item`` files that ``data.path``
        names together (it may name any one of them)."""
        try:
            files = _locate(self.path) if self.path else ()
        except DataError:  # gone or ambiguous: reading it says so
            files = ()
        return super().input_paths() | {f"data.path's {plain_name(f).suffix} file": f for f in files if f is not None}

    def reading(self, path: Path) -> MovieLensConfig:
        """Ratings of ``path`` with the ``.user`` / ``.item`` files beside them, else the
        training's (none when the training's files are gone)."""
        config = super().reading(path)
        if None in _locate(str(path))[1:]:  # training's files are looked up only then: they may be gone
            config.side_files = _side_files(self.path)
        return config


@DATASETS.register("movielens", config=MovieLensConfig)
class MovieLensDataset(DatasetSource):
    """MovieLens ratings as CTR (rating >= 4 → 1, <= 2 → 0, 3 dropped), AutoInt's features."""

    label = "label"
    group = "user_id"
    carves = True  # as preprocessing carves (_build)
    listed_defaults_alike = True

    def __init__(self, config: MovieLensConfig):
        super().__init__(config)
        self.inter, user, item = _locate(config.path)
        trained_user, trained_item = (Path(f) if f else None for f in config.side_files)
        self.user, self.item = user or trained_user, item or trained_item
        self._streams: dict[str, pa.Table] | None = None
        self._left_out: np.ndarray | None = None

    def files(self) -> list[Path]:
        return [f for f in (self.inter, self.user, self.item) if f is not None]

    def fingerprint(self) -> dict[str, Any]:
        """The source's key with the ratings file it reads, whether ``data.path`` names the
        folder or one of its files (the same files: the same key)."""
        key = super().fingerprint()
        key["options"]["path"] = str(self.inter.resolve())
        return key

    def default_features(self) -> list[FeatureSpec]:
        features = [FeatureSpec(name="user_id"), FeatureSpec(name="item_id")]
        if self.user is not None:
            present = set(_header(self.user))
            features += [FeatureSpec(name=c) for c in ("age", "gender", "occupation") if c in present]
            if "zip_code" in present:
                features.append(FeatureSpec(name="zip", source="zip_code"))
        if self.item is not None:
            present = _header(self.item)
            if "release_year" in present:
                features.append(FeatureSpec(name="release_year"))
            genre = next((c for c in GENRE_COLUMNS if c in present), None)
            if genre is not None:
                features.append(
                    FeatureSpec(name="genres", kind="sequence", source=genre, splitter=" ", max_len=10, pooling="mean")
                )
        return features

    def streams(self) -> dict[str, RowStream]:
        names = ("all",) if self._whole() else SPLITS
        return {name: (lambda name=name: self._rows(name)) for name in names}

    def left_out_rows(self) -> np.ndarray | None:
        """Rows to score with ratings: those rated 3 (no label), once the stream is read."""
        return self._left_out

    def _whole(self) -> bool:
        """Rows to score (their label is optional): every row, in file order, one stream."""
        return self.label in self.optional_columns

    def _rows(self, name: str) -> Iterator[pa.RecordBatch]:
        if self._streams is None:
            self._streams = self._build()
        table = self._streams[name]
        for start in range(0, table.num_rows, CHUNK_ROWS):
            yield to_batch(table.slice(start, CHUNK_ROWS)).replace_schema_metadata({"file": str(self.inter)})

    def _build(self) -> dict[str, pa.Table]:
        """Each stream's rows, in file order: labelled ones (a rating of 3 left out), or every
        row when rows to score have no rating; the side files' columns joined."""
        config: MovieLensConfig = self.config  # type: ignore[assignment]
        rated = not self._whole() or "rating" in _header(self.inter)
        ratings = _read(self.inter, ["user_id", "item_id", "rating"] if rated else ["user_id", "item_id"])
        keep = np.ones(ratings.num_rows, dtype=bool)
        if rated:
            ratings = _with_labels(ratings)
            keep = pc.or_(pc.is_valid(ratings.column(PROBLEM_COLUMN)), pc.is_valid(ratings.column("label")))
            keep = keep.to_numpy(zero_copy_only=False)
        rows = self._joined(ratings.filter(pa.array(keep)))
        if self._whole():
            self._left_out = np.flatnonzero(~keep) if rated else None
            return {"all": rows}
        u = np.random.default_rng(config.split.seed).random(ratings.num_rows)
        valid, test = config.split.valid, config.split.test
        code = np.where(u < valid, 1, np.where(u < valid + test, 2, 0))[keep]
        return {split: rows.filter(pa.array(code == i)) for i, split in enumerate(SPLITS)}

    def _joined(self, ratings: pa.Table) -> pa.Table:
        """``ratings`` with the columns of the side files (by user and item) the features
        read, in file order."""
        read = column_keys(self.config.features or self.default_features(), self.label, self.group)
        for side, key in ((self.user, "user_id"), (self.item, "item_id")):
            if side is not None:
                ratings = ratings.join(_attributes(side, key, list(read)), key, join_type="left outer")
        return ratings.sort_by(LINE_COLUMN)


def _locate(path: str | None) -> tuple[Path, Path | None, Path | None]:
    """The .inter file and the .user / .item files beside it (absent ones are None); each
    may be gzip-compressed under its name with ``.gz`` (``ml-1m.inter.gz``)."""
    files = resolve_files(path, pattern=gzip_too("*.inter"))
    target = Path(path).expanduser()
    if target.is_file():
        refuse_other_compression(target, key="data.path")
        name = plain_name(target).with_suffix(".inter").name
        inter = beside(target, name)
        if not inter.is_file():
            raise DataError(f"data.path: no ratings file {name} beside {target}")
    elif len(files) > 1:
        raise DataError(f"data.path: {target} holds several ratings files ({', '.join(f.name for f in files)}); name one")
    else:
        inter = files[0]
    sides = [beside(inter, plain_name(inter).with_suffix(s).name) for s in (".user", ".item")]
    return inter, *(s if s.is_file() else None for s in sides)


def _side_files(path: str | None) -> tuple[str | None, str | None]:
    """The ``.user`` and ``.item`` files of ratings ``path`` (None where absent; both when
    ``path`` is gone)."""
    try:
        _, user, item = _locate(path)
    except DataError:
        return None, None
    return str(user) if user else None, str(item) if item else None


def _header(file: Path) -> list[str]:
    line = header_line(file)
    if line is None:
        raise DataError(f"{file}: empty file (no header)")
    return strip_types(line.split("\t"))


def _read(file: Path, need: list[str], read: list[str] = ()) -> pa.Table:
    """A whole atomic file as strings: its ``need`` columns (which must be present) and
    those of ``read`` it has."""
    columns = _header(file)
    for name in need:
        if name not in columns:
            raise DataError(f"{file}:{first_line_number(file)}: column {name!r} is absent (it has: {', '.join(columns)})")
    keep = [c for c in columns if c in {*need, *read}]
    fmt = TextFormat(columns=columns, delimiter="\t", header=True, quoting=False, keep=keep)
    return pa.Table.from_batches(list(read_delimited(file, fmt)))


def _attributes(file: Path, key: str, read: list[str]) -> pa.Table:
    """The columns of side file ``file`` that are read (``read``: of any file), one line per
    ``key`` (a key on two lines would repeat each of its ratings); a line it cannot read (in
    those columns) is an error: its key's ratings would lack their attributes."""
    table = _read(file, [key], read)
    bad = table.filter(pc.is_valid(table.column(PROBLEM_COLUMN)))
    if len(bad):
        raise DataError(f"{file}:{bad.column(LINE_COLUMN)[0]}: {bad.column(PROBLEM_COLUMN)[0]}")
    keys = table.column(key)
    counts = pc.value_counts(keys.drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        value = repeated.field("values")[0]
        lines = table.filter(pc.equal(keys, value)).column(LINE_COLUMN).to_pylist()
        raise DataError(f"{file}:{lines[1]}: {key} {value.as_py()!r} is on line {lines[0]} too; name each once")
    return table.drop_columns([c for c in (LINE_COLUMN, PROBLEM_COLUMN) if c in table.column_names])


def _with_labels(ratings: pa.Table) -> pa.Table:
    """Adds ``label`` ("1", "0", or null for a rating of 3 or a row with a problem)."""
    text = ratings.column("rating")
    number = pc.utf8_trim_whitespace(text)
    rating = pc.cast(pc.if_else(pc.match_substring_regex(number, r"^-?\d+(\.\d*)?$"), number, None), pa.float64())
    problem = ratings.column(PROBLEM_COLUMN)
    unreadable = pc.and_(pc.is_null(rating), pc.is_null(problem))
    if pc.any(unreadable).as_py():
        quoted = pc.binary_join_element_wise("rating '", pc.utf8_slice_codeunits(text, 0, 20), "' is not a number", "")
        messages = pc.coalesce(quoted, "rating is missing")  # an empty field is read as null
        problem = pc.if_else(unreadable, messages, problem)
    label = pc.if_else(pc.greater_equal(rating, POSITIVE_FROM), "1", pc.if_else(pc.less_equal(rating, NEGATIVE_UP_TO), "0", None))
    ratings = ratings.set_column(ratings.schema.get_field_index(PROBLEM_COLUMN), PROBLEM_COLUMN, problem)
    return ratings.append_column("label", label)
