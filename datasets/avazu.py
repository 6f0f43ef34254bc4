"""``avazu``: the Avazu click-through logs (Kaggle 2014), raw CSV with a header.

Columns: ``id, click, hour (YYMMDDHH), C1, banner_pos, site_*, app_*, device_*, C14..C21``.
The default features are every column but ``id`` and ``hour`` as categoricals, plus two
derived from ``hour`` as FuxiCTR does: ``hour_of_day`` (HH) and ``weekday`` (0 = Monday).
Rows are split at random by ``data.split`` (8:1:1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from ctr.datasets.tabular import DelimitedSource, FileConfig
from ctr.datasets.text import TextFormat
from ctr.datasets.validate import PROBLEM_COLUMN, require_columns
from ctr.registry import DATASETS
from ctr.schema import FeatureSpec

CATEGORICAL = [
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
DERIVED = ("hour_of_day", "weekday")
HOUR = r"^\d{8}$"


@dataclass
class AvazuConfig(FileConfig):
    """Options of the Avazu dataset.

    Args:
        min_count: ``min_count`` of the default features (FuxiCTR uses 2 on the full data).
    """

    min_count: int = 1
    encoding_keys: ClassVar[tuple[str, ...]] = (*FileConfig.encoding_keys, "min_count")
    default_feature_keys: ClassVar[tuple[str, ...]] = ("min_count",)
    per_feature: ClassVar[dict[str, str]] = {"min_count": "min_count on each feature"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")


@DATASETS.register("avazu", config=AvazuConfig)
class AvazuDataset(DelimitedSource):
    """Avazu mobile-ad click logs: 21 categoricals plus hour of day and weekday."""

    label = "click"
    listed_defaults_alike = True

    def default_features(self) -> list[FeatureSpec]:
        config: AvazuConfig = self.config  # type: ignore[assignment]
        return [FeatureSpec(name=name, min_count=config.min_count) for name in CATEGORICAL + list(DERIVED)]

    def default_options(self, features: list[FeatureSpec]) -> dict[str, Any]:
        """``min_count`` as the first feature's."""
        return {"min_count": features[0].min_count}

    def text_format(self, file: Path) -> TextFormat:
        columns = self.header(file, ",")
        needed = self.needed_columns()
        derived = {name: needed.pop(name) for name in DERIVED if name in needed}
        if derived:
            needed.setdefault("hour", f"{next(iter(derived.values()))}, read from 'hour'")
        require_columns(columns, self.required(needed), str(file))
        return TextFormat(columns, ",", header=True, quoting=True, keep=[c for c in columns if c in needed])

    def finish(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not any(name in self.needed_columns() for name in DERIVED):
            return batch
        return with_time_columns(batch)


def with_time_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Adds ``hour_of_day`` and ``weekday`` from ``hour`` (YYMMDDHH); a bad hour is a row problem."""
    hour = batch.column("hour")
    good = pc.fill_null(pc.match_substring_regex(hour, HOUR), False)
    stamp = pc.if_else(good, pc.binary_join_element_wise("20", hour, ""), None)
    parsed = pc.strptime(stamp, format="%Y%m%d%H", unit="s", error_is_null=True)
    unreadable = pc.and_(pc.is_null(parsed), pc.is_valid(hour))
    columns = dict(zip(batch.schema.names, batch.columns))
    columns["hour_of_day"] = pc.cast(pc.hour(parsed), pa.string())
    columns["weekday"] = pc.cast(pc.day_of_week(parsed), pa.string())
    if pc.any(unreadable).as_py():
        message = pc.binary_join_element_wise("hour '", pc.utf8_slice_codeunits(hour, 0, 20), "' is not YYMMDDHH", "")
        columns[PROBLEM_COLUMN] = pc.if_else(unreadable, message, batch.column(PROBLEM_COLUMN))
    out = pa.RecordBatch.from_pydict(columns)
    return out.replace_schema_metadata(batch.schema.metadata)
