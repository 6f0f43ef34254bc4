"""``criteo``: the Criteo display-advertising logs, raw DAC TSV or the Kaggle CSV.

Two layouts of the same 40 fields (a label, 13 integer counts ``I1..I13``, 26 hashed
categoricals ``C1..C26``):

- raw DAC (``train.txt`` of the Criteo Display Advertising Challenge): tab-separated, no
  header; rows may lack trailing empty fields (they are padded to 40, down to 14 fields:
  the label and the 13 integers must be there);
- Kaggle CSV (``Id,Label,I1,...,C26``, the 2014 Kaggle competition's train.csv).

Rows without a label (DAC's ``test.txt``: 39 fields, or fewer without trailing empty ones;
Kaggle's ``test.csv``: no ``Label`` in its header) are read as rows to score (``ctr predict``)
and refused for training.

``data.format: auto`` tells them apart per file from the first line. Both yield the columns
``label, I1..I13, C1..C26``; rows are split at random by ``data.split`` (8:1:1).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ctr.datasets.tabular import DelimitedSource, FileConfig
from ctr.datasets.text import EmptyFileError, TextFormat, first_line, first_line_number, header_line
from ctr.datasets.validate import require_columns
from ctr.errors import DataError
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec

NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
DAC_COLUMNS = ["label"] + NUMERIC + CATEGORICAL
KAGGLE_HEADER = ["Id", "Label"] + NUMERIC + CATEGORICAL
KAGGLE_TEST_HEADER = ["Id"] + NUMERIC + CATEGORICAL  # the competition's test.csv: no Label


def _dac_labelled(line: str) -> bool:
    """Whether a DAC line leads with its label: a line of Criteo's test.txt has 39 fields (14 to
    38 when it lacks trailing empty ones), the 14th a hashed categorical (C1: 8 hex digits)
    where a labelled line has the count I13 (a number far below 10⁷, or empty), or a first
    field (I1) other than a label 0 or 1."""
    fields = line.split("\t")
    if not len(NUMERIC) < len(fields) < len(DAC_COLUMNS):  # fields[13] is there; 40 is a labelled line
        return True
    hashed = len(fields[13]) == 8 and all(c in string.hexdigits for c in fields[13])
    return not hashed and fields[0] in ("0", "1")


@dataclass
class CriteoConfig(FileConfig):
    """Options of the Criteo dataset.

    Args:
        format: ``dac`` (raw TSV), ``kaggle`` (CSV with header) or ``auto`` (per file).
        numeric_transform: transform of I1..I13 in the default features: ``log1p`` (DLRM),
            ``standardize``, ``quantile``, or ``log_square``, which makes them categorical
            tokens floor(ln(x)^2) (the Kaggle winners' convention, as FuxiCTR).
        min_count: ``min_count`` of the default categorical features.
    """

    format: Literal["auto", "dac", "kaggle"] = "auto"
    numeric_transform: Literal["log1p", "standardize", "quantile", "log_square"] = "log1p"
    min_count: int = 1
    encoding_keys: ClassVar[tuple[str, ...]] = (*FileConfig.encoding_keys, "numeric_transform", "min_count")
    row_check_keys: ClassVar[tuple[str, ...]] = (*FileConfig.row_check_keys, "numeric_transform")
    default_feature_keys: ClassVar[tuple[str, ...]] = ("numeric_transform", "min_count")
    per_feature: ClassVar[dict[str, str]] = {"numeric_transform": "the transform of I1..I13",
                                             "min_count": "min_count on each feature"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")


def criteo_features(numeric_transform: str = "log1p", min_count: int = 1) -> list[FeatureSpec]:
    """I1..I13 (numeric, or log² bucket tokens) and C1..C26 categorical."""
    if numeric_transform == "log_square":
        numeric = [FeatureSpec(name=n, transform="log_square", min_count=min_count) for n in NUMERIC]
    else:
        numeric = [FeatureSpec(name=n, kind="numeric", transform=numeric_transform) for n in NUMERIC]
    return numeric + [FeatureSpec(name=c, min_count=min_count) for c in CATEGORICAL]


@DATASETS.register("criteo", config=CriteoConfig)
class CriteoDataset(DelimitedSource):
    """Criteo display-ad logs: raw DAC TSV or Kaggle CSV (13 counts, 26 hashed categoricals)."""

    label = "label"
    listed_defaults_alike = True

    def default_features(self) -> list[FeatureSpec]:
        config: CriteoConfig = self.config  # type: ignore[assignment]
        return criteo_features(config.numeric_transform, config.min_count)

    def fingerprint(self) -> dict[str, Any]:
        """The source's key with ``format`` as ``auto`` where ``auto`` reads each file in the
        layout the recipe names (the same rows read: one entry)."""
        key = super().fingerprint()
        if self._detected_as_named():
            key["options"]["format"] = "auto"
        return key

    def _detected_as_named(self) -> bool:
        """Whether ``format`` names the layout ``auto`` detects in each file (as any an empty
        file's: none is read); not for ``auto`` itself, or where a file's layout cannot be told."""
        config: CriteoConfig = self.config  # type: ignore[assignment]
        if config.format == "auto":
            return False
        try:
            return all((line := first_line(file)) is None or _detect(file, line) == config.format
                       for file in self.files())
        except DataError:
            return False

    def default_options(self, features: list[FeatureSpec]) -> dict[str, Any]:
        """``numeric_transform`` as I1's transform, ``min_count`` as C1's (where both are listed)."""
        by_name = {spec.name: spec for spec in features}
        if "I1" not in by_name or "C1" not in by_name:
            return {}
        return {"numeric_transform": by_name["I1"].transform, "min_count": by_name["C1"].min_count}

    def text_format(self, file: Path) -> TextFormat:
        config: CriteoConfig = self.config  # type: ignore[assignment]
        line = first_line(file)
        if line is None:
            raise EmptyFileError(f"{file}: empty file (no rows)")
        layout = config.format if config.format != "auto" else _detect(file, line)
        needed = self.needed_columns()
        require_columns(DAC_COLUMNS, needed, str(file))
        if layout == "dac":
            columns = DAC_COLUMNS if _dac_labelled(line) else self._unlabelled(file, "Criteo's test.txt")
            return TextFormat(columns, "\t", header=False, quoting=False, min_fields=len(columns) - len(CATEGORICAL),
                              keep=[c for c in columns if c in needed])
        header = [name.strip() for name in header_line(file).split(",")]  # a \r inside it: an error
        if header == KAGGLE_TEST_HEADER:
            columns = ["Id"] + self._unlabelled(file, "Kaggle's test.csv")
        elif header == KAGGLE_HEADER:
            columns = ["Id"] + DAC_COLUMNS
        else:
            raise DataError(f"{file}:{first_line_number(file)}: expected the Criteo Kaggle header Id,Label,I1..I13,"
                            f"C1..C26; {_header_problem(header)}")
        return TextFormat(columns, ",", header=True, quoting=True, keep=[c for c in columns if c in needed])

    def _unlabelled(self, file: Path, known_as: str) -> list[str]:
        """The columns of rows without a label (``known_as``): rows to score; refused to train on."""
        if self.label not in self.optional_columns:
            raise DataError(f"{file}:{first_line_number(file)}: rows without a label ({known_as}): they can be scored (ctr predict), not "
                            "trained or evaluated on")
        return DAC_COLUMNS[1:]


def _header_problem(header: list[str]) -> str:
    """Where ``header`` parts from Criteo's Kaggle header (the test file's where its second
    name is ``I1``): its first name that differs, or its length."""
    expected = KAGGLE_TEST_HEADER if header[1:2] == ["I1"] else KAGGLE_HEADER
    wrong = next((i for i, (got, want) in enumerate(zip(header, expected)) if got != want), None)
    if wrong is None:
        return f"it has {len(header)} columns, not {len(expected)}"
    return f"column {wrong + 1} is {header[wrong][:40]!r}, not {expected[wrong]!r}"  # a DAC line is one long name


def _detect(file: Path, line: str) -> str:
    if line.startswith(("Id,Label,", "Id,I1,")):
        return "kaggle"
    if "\t" in line:
        return "dac"
    raise DataError(f"{file}:{first_line_number(file)}: neither Criteo DAC TSV (tab-separated) nor Kaggle CSV (header Id,Label,...); set data.format")
