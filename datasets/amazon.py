"""``amazon``: Amazon review histories as a DIN dataset.

Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, §6.1
(Amazon Electronics): for each user with behaviours (b1, ..., bk), each prefix
(b1, ..., b(i-1)) is the history that predicts b(i) (label 1) and one item the user never
touched, sampled uniformly from all items (label 0). The last behaviour is the test
target, the one before it the validation target (DIN keeps no validation set; we carve one
the same way), the earlier ones are training targets. An item's category is its first
attribute. Everything is deterministic by ``data.seed``.

Reads the history format of the S3-Rec release (one line per user: ``user item1 item2 ...``
in time order) with its ``<name>_item2attributes.json`` (item → attribute ids).

Features: ``user_id``, ``item_id``, ``cat_id`` and the sequences ``hist_item_id`` and
``hist_cat_id``, which share the tables of ``item_id`` and ``cat_id``. The sequences keep
positions (``pooling: none``) for target attention; ``data.pooling`` changes that.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctr.datasets.source import SPLITS, DatasetSource, RowStream, beside, gzip_too, plain_name, resolve_files
from ctr.datasets.text import read_all, refuse_other_compression
from ctr.datasets.validate import LINE_COLUMN, PROBLEM_COLUMN, carriage_return_inside
from ctr.errors import DataError
from ctr.recipe import DataConfig
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec, Pooling

ATTRIBUTES_SUFFIX = "_item2attributes.json"
NO_CATEGORY = "<none>"
CHUNK_TARGETS = 32_768
log = logging.getLogger(__name__)
TARGET = "target"  # i of a row predicting b(i), the i-th item of its user's line, from b1..b(i-1)


@dataclass
class AmazonConfig(DataConfig):
    """Options of the Amazon DIN dataset.

    Args:
        attributes: the item → attributes JSON (default: ``<history name>_item2attributes.json``
            beside the history file).
        max_len: histories keep their last ``max_len`` items.
        pooling: pooling of the history features (``none`` keeps positions for DIN).
        seed: seed of the negative sampling.
    """

    attributes: str | None = None
    max_len: int = 50
    pooling: Pooling = "none"
    seed: int = 2024
    path_keys: ClassVar[tuple[str, ...]] = (*DataConfig.path_keys, "attributes")
    encoding_keys: ClassVar[tuple[str, ...]] = (*DataConfig.encoding_keys, "max_len", "pooling")
    default_feature_keys: ClassVar[tuple[str, ...]] = ("pooling",)  # max_len cuts the rows' histories too
    per_feature: ClassVar[dict[str, str]] = {"pooling": "the pooling of hist_item_id and hist_cat_id"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len < 1:
            raise ValueError("max_len must be >= 1")

    def input_paths(self) -> dict[str, Path]:
        """The recipe's paths and the history and attributes files ``data.path`` names (a
        folder's history file, the attributes file beside it)."""
        try:
            history = _history_file(self.path)
        except DataError:  # gone or ambiguous: reading it says so
            return super().input_paths()
        beside_it = {} if self.attributes else {"data.path's attributes file": default_attributes(history)}
        return super().input_paths() | {"data.path's history file": history} | beside_it

    def reading(self, path: Path) -> AmazonConfig:
        """Histories of ``path`` with the attributes file beside it when there is one (new items'
        categories), else the one training read."""
        attributes = default_attributes(_history_file(str(path)))
        if not attributes.is_file():  # training's files are read only then: they may be gone
            attributes = Path(self.attributes) if self.attributes else default_attributes(_history_file(self.path))
        return dataclasses.replace(super().reading(path), attributes=str(attributes))


Refusal = tuple[int, DataError]  # a line of the history file and the error naming it


@dataclass
class Histories:
    """Every user's items as codes: ``items`` int64 [N], user ``starts``/``lengths`` [U]."""

    users: pa.Array
    lines: np.ndarray
    items: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    item_names: pa.Array
    categories: pa.Array
    problems: list[tuple[int, str]]  # bad rows (line, what): reported, or skipped with data.on_bad_rows: skip
    refusal: Refusal | None  # the first line no setting reads (a user's second line, a \r inside a line)

    def touched(self) -> np.ndarray:
        """Sorted keys ``user * num_items + item`` of every (user, item) in the histories."""
        users = np.repeat(np.arange(self.lengths.size), self.lengths)
        return np.unique(users * len(self.item_names) + self.items)


@DATASETS.register("amazon", config=AmazonConfig)
class AmazonDataset(DatasetSource):
    """Amazon histories → DIN rows: each prefix predicts the next item and a sampled negative."""

    label = "label"
    group = "user_id"
    listed_defaults_alike = True
    own_split = True  # a user's last target to test, the one before to validation
    score_keys = {"line": LINE_COLUMN, "user_id": "user_id", "target": TARGET, "item_id": "item_id"}

    def __init__(self, config: AmazonConfig):
        super().__init__(config)
        self.history = _history_file(config.path)
        default = default_attributes(self.history)
        self.attributes = Path(config.attributes).expanduser() if config.attributes else default
        if not self.attributes.is_file():
            key = "data.attributes" if config.attributes else "data.path"
            raise DataError(f"{key}: item attributes file {self.attributes} does not exist")
        self._histories: Histories | None = None

    def files(self) -> list[Path]:
        return [self.history, self.attributes]

    def fingerprint(self) -> dict[str, Any]:
        """The source's key with the history and attributes files it reads, whether the recipe
        names them or they are found in ``data.path``'s folder or beside the history (the same
        files: the same key)."""
        key = super().fingerprint()
        key["options"]["path"] = str(self.history.resolve())
        key["options"]["attributes"] = str(self.attributes.resolve())
        return key

    def split_keys(self) -> tuple[str, ...]:
        """None: each user's items are split by their place (last to test), and ``data.seed``
        samples the negatives."""
        return ()

    def default_features(self) -> list[FeatureSpec]:
        config: AmazonConfig = self.config  # type: ignore[assignment]
        history = dict(kind="sequence", max_len=config.max_len, pooling=config.pooling)
        return [
            FeatureSpec(name="user_id"),
            FeatureSpec(name="item_id"),
            FeatureSpec(name="cat_id"),
            FeatureSpec(name="hist_item_id", share_with="item_id", **history),
            FeatureSpec(name="hist_cat_id", share_with="cat_id", **history),
        ]

    def default_options(self, features: list[FeatureSpec]) -> dict[str, Any]:
        """``pooling`` as the last feature's (a history's, in the default features)."""
        return {"pooling": features[-1].pooling}

    def streams(self) -> dict[str, RowStream]:
        return {split: (lambda split=split: self._rows(split)) for split in SPLITS}

    def _rows(self, split: str) -> Iterator[pa.RecordBatch]:
        if self._histories is None:
            self._histories = read_histories(self.history, self.attributes)
        hist = self._histories
        config: AmazonConfig = self.config  # type: ignore[assignment]
        meta = {"file": str(self.history)}
        user, target = targets(hist.lengths, split)
        touched = hist.touched()
        refusal = _first_refusal(hist.refusal, self._untouched(hist, touched, user))
        problems = [p for p in hist.problems if refusal is None or p[0] < refusal[0]]  # the file's bad lines in order
        if split == "train" and problems:
            yield _problem_rows(problems).replace_schema_metadata(meta)
        if refusal is not None:
            raise refusal[1]
        rng = np.random.default_rng([config.seed, SPLITS.index(split)])
        for start in range(0, user.size, CHUNK_TARGETS):
            chunk = slice(start, start + CHUNK_TARGETS)
            negative = sample_negatives(touched, len(hist.item_names), user[chunk], rng)
            yield build_rows(hist, user[chunk], target[chunk], negative, config.max_len).replace_schema_metadata(meta)

    def _untouched(self, hist: Histories, touched: np.ndarray, user: np.ndarray) -> Refusal | None:
        """The refusal of the first of ``user`` [T] who touched every item (no negative can be
        sampled for them), None when each has an item left."""
        num_items = len(hist.item_names)
        full = np.bincount(touched // num_items, minlength=hist.lengths.size) >= num_items
        if not (found := user[full[user]]).size:
            return None
        line, name = int(hist.lines[found.min()]), hist.users[int(found.min())].as_py()
        return line, DataError(f"{self.history}:{line}: user {name} has touched every item; no negative can be sampled")


def _first_refusal(*refusals: Refusal | None) -> Refusal | None:
    """The refusal of the earliest line among ``refusals`` (None: there is none)."""
    return min((r for r in refusals if r is not None), key=lambda r: r[0], default=None)


def targets(lengths: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(user, position) of every target of ``split``, users in file order.

    A user with k items has targets 1..k-3 in train, k-2 in valid and k-1 in test
    (position 0 has no history, so it is never a target).
    """
    if split == "train":
        counts = np.maximum(lengths - 3, 0)
        user = np.repeat(np.arange(lengths.size), counts)
        first = np.cumsum(counts) - counts
        return user, np.arange(user.size) - np.repeat(first, counts) + 1
    back = 1 if split == "test" else 2
    user = np.flatnonzero(lengths - back >= 1)
    return user, lengths[user] - back


def build_rows(hist: Histories, user: np.ndarray, target: np.ndarray, negative: np.ndarray, max_len: int) -> pa.RecordBatch:
    """Two rows per target: the next item (label 1) and the ``negative`` item (label 0), with
    the target's number among its user's items (``TARGET``, from 1) and its user's line.

    Args:
        user, target, negative: int64 [T] user index, target position, negative item code.
    """
    positive = hist.items[hist.starts[user] + target]
    begin = hist.starts[user] + np.maximum(target - max_len, 0)
    lengths = hist.starts[user] + target - begin
    # rows alternate positive, negative: row r belongs to target r // 2
    row_target = np.repeat(np.arange(user.size), 2)
    offsets = np.zeros(row_target.size + 1, dtype=np.int32)
    np.cumsum(lengths[row_target], out=offsets[1:])
    total = int(offsets[-1])
    flat_start = np.repeat(begin[row_target] - offsets[:-1], lengths[row_target])
    hist_items = hist.items[flat_start + np.arange(total)]
    item = np.stack([positive, negative], axis=1).reshape(-1)
    columns = {
        "label": pa.array(np.tile(np.array([1, 0], dtype=np.int8), user.size)),
        "user_id": hist.users.take(pa.array(user[row_target])),
        "item_id": hist.item_names.take(pa.array(item)),
        "cat_id": hist.categories.take(pa.array(item)),
        "hist_item_id": pa.ListArray.from_arrays(pa.array(offsets), hist.item_names.take(pa.array(hist_items))),
        "hist_cat_id": pa.ListArray.from_arrays(pa.array(offsets), hist.categories.take(pa.array(hist_items))),
        TARGET: pa.array(target[row_target] + 1),
        LINE_COLUMN: pa.array(hist.lines[user[row_target]]),
    }
    return pa.RecordBatch.from_pydict(columns)


def sample_negatives(touched: np.ndarray, num_items: int, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per target, uniform over the items its user never touched (rejection sampling;
    each user has one: ``check_untouched``).

    Args:
        touched: sorted keys ``user * num_items + item`` (``Histories.touched``).
        user: int64 [T] user of each target.
    """
    sample = rng.integers(0, num_items, size=user.size)
    while True:
        keys = user * num_items + sample
        found = np.searchsorted(touched, keys)
        clash = touched[np.minimum(found, touched.size - 1)] == keys
        if not clash.any():
            return sample
        sample[clash] = rng.integers(0, num_items, size=int(clash.sum()))


def read_histories(file: Path, attributes: Path) -> Histories:
    """Parses the history file (vectorised) and the item categories."""
    lines, undecoded = _text_lines(file)
    broken = next((i + 1 for i, line in enumerate(lines) if "\r" in line.rstrip("\r")), None)
    carriage_return = None if broken is None else (broken, carriage_return_inside(file, broken))
    number = np.flatnonzero(np.array([bool(line.strip()) for line in lines])) + 1
    if number.size == 0 and not undecoded:  # lines that are not UTF-8 are bad rows
        raise DataError(f"{file}: empty file (no users)")
    text = pa.array([lines[i - 1] for i in number], pa.string())
    fields = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text))  # no empty last item
    counts = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
    problems = sorted(undecoded + [(int(n), "a user without items") for n in number[counts < 2]])
    fields, number, counts = fields.filter(pa.array(counts >= 2)), number[counts >= 2], counts[counts >= 2]
    users = pc.list_element(fields, 0)
    flat = pc.list_flatten(pc.list_slice(fields, 1))
    encoded = pc.dictionary_encode(flat).combine_chunks() if isinstance(flat, pa.ChunkedArray) else pc.dictionary_encode(flat)
    lengths = (counts - 1).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    item_names = encoded.dictionary
    return Histories(
        users=users,
        lines=number.astype(np.int64),
        items=encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        starts=starts,
        lengths=lengths,
        item_names=item_names,
        categories=_categories(attributes, item_names, file),
        problems=problems,
        refusal=_first_refusal(carriage_return, _repeated_user(users, number, file)),
    )


def _repeated_user(users: pa.Array, lines: np.ndarray, file: Path) -> Refusal | None:
    """The refusal of the first line [U] whose user an earlier line gave: the format gives
    each user one line (a second was read as another user of the same id, with targets of its
    own and negatives sampled among the items of the other line)."""
    _, first, code = np.unique(users.to_numpy(zero_copy_only=False), return_index=True, return_inverse=True)
    repeated = np.flatnonzero(first[code] != np.arange(code.size))
    if not repeated.size:
        return None
    row = int(repeated[0])
    return int(lines[row]), DataError(f"{file}:{lines[row]}: user {users[row].as_py()} is on line "
                                      f"{lines[first[code[row]]]} too; give each user one line (items in time order)")


def _text_lines(file: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """The lines of ``file`` (plain or gzip; numbered as an editor does; a byte order mark at
    its start dropped), a line that is not UTF-8 left empty and named as a problem (line, why)."""
    data = read_all(file)
    try:
        return data.decode("utf-8-sig").split("\n"), []
    except UnicodeDecodeError:
        lines, problems = [], []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError:
                lines.append("")
                problems.append((number, "not UTF-8 text"))
        return lines, problems


def _categories(attributes: Path, item_names: pa.Array, history: Path) -> pa.Array:
    """The first attribute of each item (``<none>`` when it has none), aligned with the items
    of ``history``; an item mapped to something other than a list is a DataError, and a file
    naming none of the items a warning (every category ``<none>``)."""
    try:
        table = json.loads(read_all(attributes))
    except json.JSONDecodeError as err:
        raise DataError(f"{attributes}:{err.lineno}: invalid JSON: {err.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{attributes}: not UTF-8 text (an item → attributes JSON object)") from None
    if not isinstance(table, dict):
        raise DataError(f"{attributes}: expected a JSON object mapping items to attribute lists")
    odd = next(((k, v) for k, v in table.items() if not isinstance(v, list)), None)
    if odd is not None:
        raise DataError(f"{attributes}: item {odd[0]!r} maps to {json.dumps(odd[1])[:40]}, not a list of attribute ids")
    items = item_names.to_pylist()
    if items and not any(name in table for name in items):
        log.warning("%s names none of the %d items of %s: every category is %s", attributes, len(items), history,
                    NO_CATEGORY)
    first = {str(k): str(v[0]) for k, v in table.items() if v}
    return pa.array([first.get(name, NO_CATEGORY) for name in items], pa.string())


def _problem_rows(problems: list[tuple[int, str]]) -> pa.RecordBatch:
    names = ["label", "user_id", "item_id", "cat_id"]
    columns = {name: pa.nulls(len(problems), pa.string()) for name in names}
    for name in ("hist_item_id", "hist_cat_id"):
        columns[name] = pa.nulls(len(problems), pa.list_(pa.string()))
    columns[TARGET] = pa.nulls(len(problems), pa.int64())
    columns[LINE_COLUMN] = pa.array([line for line, _ in problems], pa.int64())
    columns[PROBLEM_COLUMN] = pa.array([text for _, text in problems], pa.string())
    return pa.RecordBatch.from_pydict(columns)


def default_attributes(history: Path) -> Path:
    """The attributes file beside ``history``: ``<history name>_item2attributes.json`` (or its
    ``.gz``), the history's name taken without ``.gz`` (``Beauty.txt.gz``: ``Beauty_...``)."""
    return beside(history, plain_name(history).stem + ATTRIBUTES_SUFFIX)


def _history_file(path: str | None) -> Path:
    """The history file: ``data.path`` itself, or the one history file (``*.txt``, or
    ``*.txt.gz``) of a folder."""
    files = resolve_files(path, pattern=gzip_too("*.txt"))
    candidates = [f for f in files if default_attributes(f).is_file()] or files
    if len(candidates) > 1 and not Path(path).expanduser().is_file():
        names = ", ".join(f.name for f in candidates)
        raise DataError(f"data.path: {path} holds several history files ({names}); name one, e.g. {candidates[0]}")
    refuse_other_compression(candidates[0], key="data.path")
    return candidates[0]
