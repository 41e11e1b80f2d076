"""Every table's explicit pyarrow schema, in one place.

Each schema carries its table name and schema version in the Parquet file's key-value metadata, so a reader can
tell what a file holds and refuse one written by a newer, incompatible version.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
TABLE_KEY = b"crossmatch.table"
VERSION_KEY = b"crossmatch.schema_version"


def _table(name: str, *fields: pa.Field) -> pa.Schema:
    return pa.schema(list(fields), metadata={TABLE_KEY: name.encode(), VERSION_KEY: str(SCHEMA_VERSION).encode()})


def _f(name: str, type_: pa.DataType, nullable: bool = False, doc: str = "") -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={b"doc": doc.encode()} if doc else None)


SHA256 = pa.string()  # lowercase hex, 64 characters

MANIFEST = _table(
    "manifest",
    _f("run_id", pa.string(), doc="the run that wrote the row"),
    _f("uri", pa.string(), doc="the object's full URI"),
    _f("relpath", pa.string(), doc="path below the listed archive prefix"),
    _f("size", pa.int64(), doc="bytes"),
    _f("modified", pa.timestamp("ms", tz="UTC"), nullable=True, doc="last modification time, when the store has one"),
    _f("sha256", SHA256, doc="sha256 of the content"),
    _f("media_kind", pa.string(), doc="format from magic bytes: jpeg, png, wav, mp4, ..."),
    _f("media_category", pa.string(), doc="image, audio or video"),
    _f("mime", pa.string(), doc="MIME type from the content"),
    _f("label", pa.string(), nullable=True, doc="label taken from the path by the job's label pattern"),
    _f("duplicate_of", pa.string(), nullable=True, doc="for repeated content: the first uri (sorted) with it"),
)

ERRORS = _table(
    "errors",
    _f("run_id", pa.string()),
    _f("job", pa.string(), doc="the job that met the error"),
    _f("uri", pa.string(), doc="the input the error belongs to"),
    _f("sha256", SHA256, nullable=True, doc="the input's content hash, when it could be read"),
    _f("stage", pa.string(), doc="the step that failed: read, sniff, decode, ..."),
    _f("error_type", pa.string(), doc="a stable name to count by"),
    _f("message", pa.string(), doc="what went wrong, for a person"),
)

TABLES: dict[str, pa.Schema] = {"manifest": MANIFEST, "errors": ERRORS}


def schema_for(table: str) -> pa.Schema:
    """The schema of ``table``; KeyError names the known tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(TABLES))}") from None


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` with exactly the schema's columns, order, types and metadata; a missing column is an error."""
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ValueError(f"table {schema.metadata[TABLE_KEY].decode()} is missing columns {missing}")
    nulls = [f.name for f in schema if not f.nullable and data.column(f.name).null_count]
    if nulls:
        raise ValueError(f"table {schema.metadata[TABLE_KEY].decode()} has nulls in required columns {nulls}")
    return data.select(schema.names).cast(schema)
