"""A run's saved schema and vocabularies as an encoder: raw rows are encoded exactly as the
run's training data was, without fitting anything (``ctr eval``, ``ctr predict``).

A run directory keeps ``schema/schema.json``, ``schema/counts.npz`` and
``schema/vocab/<table>.parquet`` (tokens in id order, or ``num_ids`` for identity tables).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ctr.datasets.encode import Encoder
from ctr.datasets.vocab import IdCounter, IdentityVocabulary, Vocabulary
from ctr.errors import UserError, reason
from ctr.schema import FeatureInfo, Schema


def load_schema(schema_dir: Path) -> Schema:
    """The saved schema and training frequencies; a UserError naming the file the folder lacks."""
    for name, what in (("schema.json", "schema"), ("counts.npz", "training frequencies")):
        if not (schema_dir / name).exists():
            raise UserError(f"{schema_dir}: no saved {what} ({name})")
    return Schema.load(schema_dir)


def load_vocabularies(schema_dir: Path, schema: Schema) -> dict[str, Vocabulary | IdentityVocabulary]:
    """Table name → its vocabulary as fitted on the run's training rows."""
    vocabs: dict[str, Vocabulary | IdentityVocabulary] = {}
    for table, info in _owners(schema).items():
        saved = pq.read_table(_vocabulary_file(schema_dir, info))
        if info.spec.num_ids:
            counter = IdCounter(info.spec.num_ids, info.spec.name)
            counter.counts[:] = schema.counts[table][1 + info.spec.oov_buckets :]
            vocabs[table] = IdentityVocabulary(counter, info.spec)
        else:
            tokens = saved["token"].combine_chunks()
            vocabs[table] = Vocabulary(tokens, saved["count"].to_numpy(), info.spec.oov_buckets)
    return vocabs


def check_vocabularies(schema_dir: Path, schema: Schema) -> None:
    """Checks that every table's saved vocabulary is there and whole (its footer and columns,
    not its tokens): a UserError names the first that is not."""
    for info in _owners(schema).values():
        _vocabulary_file(schema_dir, info)


def _owners(schema: Schema) -> dict[str, FeatureInfo]:
    """Table name → the feature that owns it (features sharing a table share its vocabulary)."""
    return {info.table: info for info in schema.sparse_features if info.spec.name == info.table}


def _vocabulary_file(schema_dir: Path, info: FeatureInfo) -> Path:
    """The saved vocabulary file of the table ``info`` owns (``token`` and ``count`` columns;
    ``num_ids`` for an identity table), checked by its footer; a UserError naming it when it is
    gone or not whole."""
    path = schema_dir / "vocab" / f"{info.table}.parquet"
    if not path.exists():
        raise UserError(f"{path}: no saved vocabulary")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{path}: not a readable saved vocabulary ({reason(err, typed=True)})") from None
    missing = [name for name in (("num_ids",) if info.spec.num_ids else ("token", "count")) if name not in names]
    if missing:
        raise UserError(f"{path}: not a saved vocabulary (no {' or '.join(missing)} column)")
    return path


def saved_encoder(schema_dir: Path, schema: Schema, group: str | None) -> Encoder:
    """The encoder of the run's training data (``group``: the group column, or None)."""
    numeric = {info.spec.name: info.numeric for info in schema.dense_features}
    table_of = {info.spec.name: info.table for info in schema.sparse_features}
    return Encoder([info.spec for info in schema.features], table_of, load_vocabularies(schema_dir, schema), numeric,
                   group)
