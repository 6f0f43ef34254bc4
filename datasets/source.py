"""Dataset sources: where raw rows come from, as a stream of Arrow record batches."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from ctr.atomic import special_kind
from ctr.errors import DataError, RecipeError, not_utf8, reason
from ctr.recipe import DataConfig, FeatureShorthand, SplitConfig
from ctr.registry import DATASETS
from ctr.schema import RESERVED_NAMES, FeatureSpec
from ctr.typed import parse, to_plain

SPLITS = ("train", "valid", "test")
SPLIT_KEYS = ("valid", "test", "seed")  # of data.split
# the data.split keys that decide each split's rows where one seeded draw u in [0, 1) a row
# carves them in order: u < valid into valid, then u < valid + test into test, the rest into train
CARVED_BY = {"valid": ("valid", "seed"), "test": SPLIT_KEYS, "train": SPLIT_KEYS}
RowStream = Callable[[], Iterator[pa.RecordBatch]]
# the options of a feature each kind never reads (``unread_options``; share_with on a numeric one is refused)
UNREAD_BY_KIND = {"numeric": ("min_count", "max_vocab", "oov_buckets", "max_len", "splitter", "pooling"),
                  "categorical": ("max_len", "splitter", "pooling", "fill"), "sequence": ("fill",)}
GZ = ".gz"  # the suffix of a gzip-compressed text file (its contents, not its name, tell how it reads)
OTHER_COMPRESSED = (".bz2", ".xz", ".zst", ".zip", ".lz4")  # the suffixes of the other compressions' files


class DatasetSource(ABC):
    """A registered dataset: its default features and a reader of its raw rows.

    A source returns either one stream ``{"all": ...}`` (split at random by
    ``data.split``, seeded by ``data.split.seed``) or its own ``{"train", "valid", "test"}`` streams.
    Each record batch has the raw columns the features name, plus the label (and group).

    Args:
        config: the recipe's ``data`` block (the dataset's own config class).
    """

    label: str = "label"
    group: str | None = None
    optional_columns: frozenset[str] = frozenset()  # may be absent (the label when scoring new rows)
    scored_features: list[FeatureSpec] | None = None  # those of the run whose saved schema scores the rows
    generated: bool = False  # rows made by the source itself: no file of them can be scored
    own_split: bool = False  # splits its rows itself: reads neither data.split.valid nor data.split.test
    carves: bool = False  # its splits are carved as CARVED_BY says (by preprocessing or as it does)
    # its default features, listed, read the rows as left out do: they key the entry of the recipe leaving
    # them out (``defaults_listed``); a source reading its rows otherwise once its features are listed keeps False
    listed_defaults_alike: bool = False
    # rows built from the input (not read one to one): output name → raw column of the keys
    # that ``ctr predict`` writes beside each score, so scores join back to what they score
    score_keys: dict[str, str] = {}

    def __init__(self, config: DataConfig):
        self.config = config

    @abstractmethod
    def default_features(self) -> list[FeatureSpec]:
        """Features used when the recipe does not list its own."""

    @abstractmethod
    def streams(self) -> dict[str, RowStream]:
        """``{"all": stream}`` or ``{"train": ..., "valid": ..., "test": ...}``."""

    def split_keys(self) -> tuple[str, ...]:
        """The ``data.split`` keys that decide which split each row is in: all of them for rows
        preprocessing splits (an ``all`` stream) or that a source splits by ``data.split``
        itself; a source that reads fewer names those (the cache key holds no other)."""
        return SPLIT_KEYS

    def split_keys_of(self, split: str) -> tuple[str, ...]:
        """The ``data.split`` keys that decide which rows ``split`` holds: of ``split_keys``, those
        ``CARVED_BY`` names where the splits are carved in its order (``carves``; the test
        fraction moves no valid row), else all of them."""
        read = self.split_keys()
        return tuple(key for key in read if key in CARVED_BY[split]) if self.carves else read

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the raw input (for the cache key): options plus file stamps. An
        option the rows do not depend on is there at its default (recipes that differ only
        there share an entry): a ``data.split`` key not in ``split_keys``, and where the recipe
        lists its features, a key that only builds the default ones (``default_feature_keys``);
        a ``label`` or ``group`` that names the source's own is there as left out, and so are
        an empty path and listed features the dataset builds as its defaults (``_listed_options``)."""
        options = to_plain(self.config)
        for key in ("cache_dir", "prefetch", "shuffle_buffer", "on_device"):
            options.pop(key, None)
        options["split"] = keyed_split(self.config.split, self.split_keys())
        for key in ("label", "group"):  # the source's own named: as when left out (the key holds the one read)
            if options.get(key) == getattr(self, key):
                options[key] = None
        if self.config.features:
            options.update(self._listed_options())
        for key in type(self.config).path_keys:  # the same files named from another folder: the same key
            if isinstance(options.get(key), str):  # an empty one names no file, as left out
                options[key] = str(Path(options[key]).expanduser().resolve()) if options[key] else None
        key = {"class": type(self).__name__, "options": options, "files": file_stamps(self.files())}
        code = plugin_code(type(self))
        return {**key, "code": code} if code else key

    def _listed_options(self) -> dict[str, Any]:
        """The options keying a recipe that lists its features: those of the recipe leaving them
        out where it would build these as its defaults (``defaults_listed``: the same rows encoded
        alike, one entry), else the features as the key holds them (``keyed_features``) and the
        ``default_feature_keys`` at their defaults (unread)."""
        values, listed = self.defaults_listed(), self.config.features
        if values is not None:
            return {**to_plain(values), "features": None}
        features = keyed_features(listed) if isinstance(listed, list) else to_plain(listed)  # a shorthand unresolved
        return {**_defaults(type(self.config), type(self.config).default_feature_keys), "features": features}

    def defaults_listed(self) -> dict[str, Any] | None:
        """The ``default_feature_keys`` values (each of them) with which a recipe leaving
        ``data.features`` out builds the features this recipe lists (``keyed_features`` compares
        them) and reads its rows alike; None where none does: a source not saying its listed defaults
        read alike (``listed_defaults_alike``), a dataset without default features, or features other
        than its defaults."""
        if not self.listed_defaults_alike or not isinstance(self.config.features, list):
            return None
        config_type = type(self.config)
        values = {**_defaults(config_type, config_type.default_feature_keys),
                  **self.default_options(self.config.features)}
        try:  # a guess no config takes, a dataset without default features (a plugin's may raise anything)
            alike = parse(config_type, {**to_plain(self.config), **values, "features": None}, "data")
            built = default_features(DATASETS.get(alike.dataset).target(alike))
        except Exception:
            return None
        return values if keyed_features(built) == keyed_features(self.config.features) else None

    def default_options(self, features: list[FeatureSpec]) -> dict[str, Any]:
        """The values of ``default_feature_keys`` that would build ``features`` as the default
        features, where they are (a guess ``defaults_listed`` checks): none here (their defaults)."""
        return {}

    def files(self) -> list[Path]:
        """The raw files this source reads (empty for generated data)."""
        return []

    def draws_as(self, generator: int) -> bool:
        """Whether a generated source draws for its config the rows that version ``generator``
        of its generator drew (the ``generator`` of its fingerprint): the same version does."""
        return generator == getattr(self, "generator_version", None)

    def left_out_rows(self) -> np.ndarray | None:
        """Of rows to score (``optional_columns`` holds the label): the input rows, numbered from
        0 in read order, that the streams left out as having no label (int64 [K], ascending),
        once they are read; None for a source that yields every row."""
        return None

    def index_columns(self) -> list[str]:
        """Columns of ``columns`` that index the rows rather than describe them (the index
        pandas stores in a parquet file): the shorthand makes no feature of them unless a spec
        reads them."""
        return []

    def columns(self) -> list[str]:
        """The raw columns of the data, in order (what a ``FeatureShorthand`` resolves against)."""
        raise RecipeError(
            f"data.features.default_kind: the {self.config.dataset} dataset cannot list its columns; list every feature"
        )


def keyed_split(split: SplitConfig, read: Iterable[str]) -> dict[str, Any]:
    """``split`` as the cache key holds it: the keys in ``read`` as given, the others at their
    defaults (a key no row depends on keys no other entry)."""
    given, defaults = to_plain(split), to_plain(SplitConfig())
    return {key: value if key in read else defaults[key] for key, value in given.items()}


def keyed_features(features: list[FeatureSpec]) -> list[dict[str, Any]]:
    """``features`` as the cache key holds them: plain, a ``source`` naming the feature's own
    column left out (the same column read), and the options its kind never reads at their
    defaults (``unread_options``: the same rows encoded alike)."""
    return [{**to_plain(spec), "source": None if spec.source == spec.name else spec.source,
             **_defaults(FeatureSpec, unread_options(spec))} for spec in features]


def unread_options(spec: FeatureSpec) -> tuple[str, ...]:
    """The options of ``spec`` that neither preprocessing, nor a model, nor an export reads for
    its kind: the vocabulary's and the items' of a numeric feature, the items' and ``fill`` of a
    categorical one, ``fill`` of a sequence, ``num_buckets`` but with a ``quantile`` transform,
    and ``min_count`` and ``max_vocab`` of a ``num_ids`` feature (no vocabulary is counted)."""
    unread = UNREAD_BY_KIND[spec.kind] + (("num_buckets",) if spec.transform != "quantile" else ())
    return unread + (("min_count", "max_vocab") if spec.num_ids else ())


def _defaults(config: type, keys: Iterable[str]) -> dict[str, Any]:
    """The default values of config class ``config``'s ``keys``, as ``to_plain`` writes them."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    return {key: to_plain(fields[key].default_factory() if fields[key].default is dataclasses.MISSING
                          else fields[key].default) for key in keys}


def default_features(source: DatasetSource) -> list[FeatureSpec]:
    """``source.default_features()``, refusing anything but a list of FeatureSpec (a plugin's
    names or dicts failed later in an AttributeError traceback), and naming the source in the
    ValueError of a FeatureSpec it builds (a traceback before)."""
    try:
        features = source.default_features()
    except ValueError as err:
        raise DataError(f"data.dataset: {source.config.dataset}'s default_features(): {reason(err)}") from None
    if isinstance(features, (list, tuple)):
        wrong = next(((i, f) for i, f in enumerate(features) if not isinstance(f, FeatureSpec)), None)
        if wrong is None:
            return list(features)
        got = f"{wrong[1]!r} (a {type(wrong[1]).__name__}) at [{wrong[0]}]"
    else:
        got = f"a {type(features).__name__}"
    raise DataError(f"data.dataset: {source.config.dataset}'s default_features() returned {got}; a source returns a "
                    "list of FeatureSpec (ctr.schema)")


def resolve_features(config: DataConfig) -> DataConfig:
    """``config`` with ``features`` an explicit list when the recipe gives a ``FeatureShorthand``:
    each column of the data, in order, is read by its spec in ``specs`` or becomes a feature of
    ``default_kind``; the label, the group and ``skip`` are left out."""
    shorthand = config.features
    if not isinstance(shorthand, FeatureShorthand):
        return config
    source = DATASETS.get(config.dataset, "data.dataset").target(config)
    columns = source.columns()
    for key, names in (("skip", shorthand.skip), ("specs", [spec.column for spec in shorthand.specs])):
        missing = [name for name in names if name not in columns]
        if missing:
            raise RecipeError(
                f"data.features.{key}: no column {missing[0]!r} in the data (columns: {', '.join(columns)})"
            )
    by_column: dict[str, list[FeatureSpec]] = {}
    for spec in shorthand.specs:
        by_column.setdefault(spec.column, []).append(spec)
    left_out = {config.label or source.label, config.group or source.group, *shorthand.skip, *source.index_columns()}
    read = [c for c in columns if c not in left_out or c in by_column]
    _refuse_unnamed_or_repeated(read, columns, config.path)
    _refuse_spec_named_as_column(shorthand.specs, [c for c in read if c not in by_column])
    features = [spec for c in read for spec in by_column.get(c) or [_column_feature(c, shorthand.default_kind)]]
    if not features:
        raise RecipeError(f"data.features: leaves no column a feature (columns: {', '.join(columns)}; the label, the "
                          "group and data.features.skip left out); list fewer in skip, or name a spec")
    return dataclasses.replace(config, features=features)


def _refuse_spec_named_as_column(specs: list[FeatureSpec], defaults: list[str]) -> None:
    """A spec named as a column that becomes a feature of its own name (``defaults``): two
    features of one name."""
    clash = next(((i, spec.name) for i, spec in enumerate(specs) if spec.name in defaults), None)
    if clash is not None:
        raise RecipeError(f"data.features.specs[{clash[0]}].name: {clash[1]!r} is a column of the data too, which becomes "
                          f"a feature of that name; add {clash[1]!r} to data.features.skip, or name the spec otherwise")


def _column_feature(column: str, kind: str) -> FeatureSpec:
    """The shorthand's feature of ``column``, named after it; a RecipeError for a name the
    encoded data keeps for its own columns (``__label__``, ``__group__``)."""
    if column in RESERVED_NAMES:
        raise RecipeError(f"data.features: column {column!r} cannot be a feature of that name (the encoded data's own "
                          "column); add it to data.features.skip, or read it in data.features.specs under another name "
                          f"({{name: ..., source: {column}}})")
    return FeatureSpec(name=column, kind=kind)


def _refuse_unnamed_or_repeated(read: list[str], columns: list[str], path: str | None) -> None:
    """A column the shorthand would read that has no name (a header's trailing delimiter) or
    a name another column has (which one a feature reads would be ambiguous)."""
    times = Counter(columns)
    for column in read:
        if not column:
            raise DataError(f"data.features: a column of {path}'s header has no name (column {columns.index(column) + 1});"
                            " add '' to data.features.skip, or name it")
        if times[column] > 1:
            raise DataError(f"data.features: column {column!r} appears {times[column]} times in {path}'s header;"
                            " name it once")


def resolve_files(path: str | None, key: str = "data.path", pattern: str | tuple[str, ...] = "*") -> list[Path]:
    """The files at ``path``: the file itself, or a folder's files matching ``pattern`` (one
    glob or several) but those named ``.*`` or ``_*`` (hidden files, and the markers and
    checksums that Spark and Hadoop write beside their parts: ``_SUCCESS``, ``.part-0.csv.crc``)."""
    if not path:
        raise DataError(f"{key}: this dataset needs the path of its files")
    target = Path(path).expanduser()
    if target.is_file():
        return utf8_names([target], key)
    if target.is_dir():
        patterns = (pattern,) if isinstance(pattern, str) else pattern
        found = sorted({p for glob in patterns for p in target.glob(glob)
                        if p.is_file() and not p.name.startswith((".", "_"))})
        if found:
            return utf8_names(found, key)
        raise DataError(f"{key}: folder {target} holds no files matching {' or '.join(map(repr, patterns))}")
    kind = special_kind(target)
    if kind is not None:
        raise DataError(f"{key}: {target}: not a regular file or folder ({kind})")
    raise DataError(f"{key}: {target} does not exist")


def utf8_names(files: list[Path], key: str) -> list[Path]:
    """``files``, refused (naming ``key`` and the first file) where a name is not UTF-8 (a
    Latin-1 byte of a file in a folder, or of HOME under ``~``): pyarrow, which reads them and
    records their names in the encoded entry, encodes UTF-8 names only."""
    for file in files:
        found = not_utf8(str(file))
        if found is not None:
            raise DataError(f"{key}: {found[0]}: a name that is not UTF-8 (byte {found[1]:#04x}); rename it")
    return files


def gzip_too(pattern: str) -> tuple[str, str]:
    """``pattern`` and its gzip form (``*.txt``: ``*.txt``, ``*.txt.gz``)."""
    return pattern, f"{pattern}{GZ}"


def plain_name(file: Path) -> Path:
    """``file`` less a ``.gz`` suffix (``Beauty.txt.gz`` → ``Beauty.txt``): the name the
    files beside it are named after."""
    return file.with_suffix("") if file.suffix == GZ else file


def beside(file: Path, name: str) -> Path:
    """The file ``name`` in ``file``'s folder, or its gzip form ``name.gz`` when only that is
    there (the plain name when neither is)."""
    plain, packed = file.with_name(name), file.with_name(name + GZ)
    return packed if not plain.is_file() and packed.is_file() else plain


def plugin_code(source: type) -> list[str] | None:
    """A dataset plugin's module file and the SHA-256 of its code (``code_digest``; ``None`` for
    ctr's own datasets, which ``PIPELINE_VERSION`` covers): a plugin whose code changed encodes anew."""
    if source.__module__.startswith("ctr."):
        return None
    file = getattr(sys.modules.get(source.__module__), "__file__", None)
    return [str(Path(file).resolve()), code_digest(Path(file))] if file else None


def code_digest(module: Path) -> str:
    """The SHA-256 of plugin module ``module``'s code: its file's text, or where it is in a
    package, the text of each file of its top-level package that ``package_files`` names, by its
    path there, so a helper module of its own package that it imports keys the entry too."""
    package = plugin_package(module)
    if package is None:
        return file_digest(module)
    digest = hashlib.sha256()
    for file in package_files(package):
        digest.update(f"{file.relative_to(package)}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


def package_files(package: Path) -> list[Path]:
    """The ``.py`` files under ``package``, in path order (as ``sorted(package.rglob("*.py"))``
    gives those of a plain package): every folder is walked, one without an ``__init__.py`` too
    (``pkg/helpers/util.py`` imports as ``pkg.helpers.util``); regular files, or links to them.
    Left out: names starting with ``.`` (an editor's lock link ``.#reader.py``, ``.git``),
    ``__pycache__``, linked folders and links to no file. A DataError names a folder that cannot
    be read."""
    folders, files = _listed(package)
    for folder in folders:
        files += package_files(folder)
    return sorted(files)


def _listed(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folders to walk and the ``.py`` files in ``folder`` (``package_files``)."""
    try:
        paths = [path for path in folder.iterdir() if not path.name.startswith(".")]
        return ([path for path in paths if path.is_dir() and not path.is_symlink() and path.name != "__pycache__"],
                [path for path in paths if path.suffix == ".py" and path.is_file()])
    except OSError as err:
        raise _unreadable(folder, err) from None


def file_digest(file: Path) -> str:
    """The SHA-256 of plugin code file ``file``'s bytes; a DataError naming it where it cannot be read."""
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as err:
        raise _unreadable(file, err) from None


def _unreadable(path: Path, err: OSError) -> DataError:
    """The one-line error of plugin code file or folder ``path`` that ``err`` kept from being read."""
    return DataError(f"data.dataset: plugin code {path}: cannot be read ({(err.strerror or reason(err)).lower()})")


def plugin_package(module: Path) -> Path | None:
    """The folder of the top-level package holding plugin module ``module`` (each folder from
    the module's up to it holds an ``__init__.py``); None for a module outside a package."""
    folder = module.resolve().parent
    if not (folder / "__init__.py").is_file():
        return None
    while (folder.parent / "__init__.py").is_file():
        folder = folder.parent
    return folder


def code_change(module: str) -> str:
    """Why an entry keyed by plugin module ``module``'s code is stale: that code changed (with
    its package's, where it is in one)."""
    package = plugin_package(Path(module))
    return f"the code of dataset plugin {module} changed" + (f" (or of its package {package})" if package else "")


def file_stamps(files: list[Path]) -> list[list[Any]]:
    """Each file's path, size and modification time: a file rewritten since gets a new cache key."""
    return [[str(file.resolve()), *file_stamp(file)] for file in files]


def file_stamp(file: Path) -> tuple[int, int]:
    """Size and modification time in nanoseconds (in whole seconds, a file rewritten at the
    same size within the second kept its stale encoding)."""
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns
