"""Data files: Parquet written by workers a row group at a time, their schema as files hold it, statistics."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ops.io.schemas import conform, schema_for, stored
from ops.io.storage import Store, storage_errors
from ops.io.tables.location import DATA, LIST_SIZE, DataFile, table_store

# Row groups of about this much Arrow memory: large enough for fast scans, small enough to stream.
ROW_GROUP_BYTES = 64 << 20


# Files rotate past this much data, so that a big run is a handful of large files rather than thousands of tiny ones.
FILE_BYTES = 512 << 20


def write_data_files(
    root: Store, table: str, data: pa.Table, schema: pa.Schema | None, run_id: str, attempt: str
) -> list[DataFile]:
    """Write ``data`` (rows of run ``run_id``) as Parquet data files of ``table`` (one unless it is huge),
    invisible until the run commits them: what a Ray worker calls on its own rows."""
    writer = TableWriter(root, table, run_id, attempt, schema)
    writer.write(data)
    return writer.close()


class TableWriter:
    """Writes one table's rows of one run attempt as zstd Parquet data files with the table's explicit schema."""

    def __init__(self, root: Store, table: str, run_id: str, attempt: str, schema: pa.Schema | None = None) -> None:
        self.root, self.table, self.run_id, self.attempt = root, table, run_id, attempt
        schema = schema or schema_for(table)
        if schema is None:
            raise ValueError(f"table {table} needs an explicit schema (its width depends on the model)")
        self.schema = stored(schema)
        self.file_schema = file_schema(self.schema)
        self.store = table_store(root, table)
        self.files: list[DataFile] = []
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._stats: list[pa.Table] = []

    def write(self, data: pa.Table) -> None:
        """Buffer rows; they reach storage in row groups of about ROW_GROUP_BYTES."""
        if data.num_rows == 0:
            return
        if "attempt" not in data.column_names:
            data = data.append_column("attempt", pa.array([self.attempt] * data.num_rows, pa.string()))
        data = conform(data, self.schema)
        if set(data.column("run_id").unique().to_pylist()) != {self.run_id}:
            raise ValueError(f"rows of another run written into run {self.run_id} of {self.table}")
        self._pending.append(data)
        self._pending_bytes += data.nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> list[DataFile]:
        """Write what is buffered and return the files written (none for a table that got no rows)."""
        self._flush()
        if self._writer is not None:
            with storage_errors(self.store.join(self._path).uri):
                self._finish_file()
        return list(self.files)

    def _flush(self) -> None:
        if not self._pending:
            return
        with storage_errors(self.store.uri):
            group = pa.concat_tables(self._pending)
            self._pending, self._pending_bytes = [], 0
            if self._writer is None:
                self._path = f"{DATA}/{self.run_id}/{self.attempt}-{uuid.uuid4().hex[:12]}.parquet"
                self._sink = self.store.join(self._path).open("wb")
                self._writer = pq.ParquetWriter(self._sink, self.file_schema, compression="zstd")
            self._writer.write_table(group.cast(self.file_schema), row_group_size=group.num_rows)
            self._stats.append(_column_stats(group))
            if self._sink.tell() >= FILE_BYTES:
                self._finish_file()

    def _finish_file(self) -> None:
        self._writer.close()
        size = self._sink.tell()
        self._sink.close()
        stats = _merge_stats(self._stats)
        self.files.append(DataFile(self.table, self._path, stats["numRecords"], size, json.dumps(stats)))
        self._writer = self._sink = None
        self._stats = []


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema data files are written with: ``schema``, each fixed-size list a list as in the Delta log (Polars
    reads a table by the log's types and refuses a file whose Arrow type says a fixed size), its width in the field's
    metadata for ``exact``."""
    return pa.schema(
        [
            f.with_type(pa.list_(f.type.value_field)).with_metadata(
                (f.metadata or {}) | {LIST_SIZE: str(f.type.list_size).encode()}
            )
            if pa.types.is_fixed_size_list(f.type)
            else f
            for f in schema
        ],
        metadata=schema.metadata,
    )


def exact(data: pa.Table) -> pa.Table:
    """Rows read from data files without the table's schema, each column a data file holds as a list for a
    fixed-size one (``file_schema``) cast back to its width: files written before that hold it fixed already."""
    for i, f in enumerate(data.schema):
        if pa.types.is_list(f.type) and f.metadata and LIST_SIZE in f.metadata:
            fixed = pa.list_(f.type.value_type, int(f.metadata[LIST_SIZE]))
            metadata = {k: v for k, v in f.metadata.items() if k != LIST_SIZE}
            field = f.with_type(fixed).with_metadata(metadata) if metadata else f.with_type(fixed).remove_metadata()
            data = data.set_column(i, field, data.column(i).cast(fixed))
    return data


def _column_stats(data: pa.Table) -> pa.Table:
    """One row: the row count and each scalar column's min, max and null count (Delta's file statistics)."""
    row: dict[str, Any] = {"numRecords": data.num_rows}
    for name, column in zip(data.column_names, data.columns, strict=True):
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
            bounds = pc.min_max(column)
            row[f"min.{name}"], row[f"max.{name}"] = bounds["min"].as_py(), bounds["max"].as_py()
        if not pa.types.is_nested(kind):
            row[f"null.{name}"] = column.null_count
    return pa.Table.from_pylist([row])


def _merge_stats(parts: list[pa.Table]) -> dict:
    merged: dict[str, Any] = {"numRecords": 0, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for part in parts:
        for key, value in part.to_pylist()[0].items():
            if key == "numRecords":
                merged["numRecords"] += value
                continue
            kind, name = key.split(".", 1)
            if kind == "null":
                merged["nullCount"][name] = merged["nullCount"].get(name, 0) + value
            elif value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                # NaN and infinities have no JSON: delta-rs would drop the file's statistics whole
                target, pick = (merged["minValues"], min) if kind == "min" else (merged["maxValues"], max)
                target[name] = value if name not in target else pick(target[name], value)
    return merged
