"""Encoded parquet shards: written as record batches arrive, read back column by column."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_ROWS = 1 << 20
ROW_GROUP = 1 << 16


class ShardWriter:
    """Writes record batches into ``folder/part-00000.parquet``, ... of about SHARD_ROWS rows."""

    def __init__(self, folder: Path, shard_rows: int = SHARD_ROWS):
        self.folder = folder
        self.shard_rows = shard_rows
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._shards = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None or self._rows_in_shard >= self.shard_rows:
            self._open(batch.schema)
        self._writer.write_batch(batch, row_group_size=ROW_GROUP)
        self._rows_in_shard += batch.num_rows

    def _open(self, schema: pa.Schema) -> None:
        self.close()
        path = self.folder / f"part-{self._shards:05d}.parquet"
        # uncompressed with dictionary pages: small on disk and the fastest to decode
        self._writer = pq.ParquetWriter(path, schema, compression="none")
        self._shards += 1
        self._rows_in_shard = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abandon(self) -> None:
        """Drops the open shard after a failed write (a full disk), whose close fails too: its
        error is dropped, and not raised again when the writer is collected."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with contextlib.suppress(OSError):
            writer.close()
        writer.is_open = False


def shard_files(folder: Path) -> list[Path]:
    """The shards of one split, in order."""
    return sorted(folder.glob("part-*.parquet"))
