"""Results as Delta Lake tables: every engine reads only committed runs, a rerun replaces, deletion erases.

Layout under an output root (a local folder or an S3 prefix)::

    <root>/<table>/_delta_log/...                       each table is a Delta table (delta-rs, no JVM)
    <root>/<table>/data/<run_id>/<attempt>-*.parquet    its data files: zstd Parquet, one run attempt per file
    <root>/runs/                                        a Delta table too: one row per committed run

A run writes data files into each table (workers write their own, the driver only small tables), then commits:
each table's files are appended to its log in one transaction, and last the run's row goes into ``runs`` in one
transaction that replaces the run's earlier row. **A row counts when its (run_id, attempt) is in runs**, so a reader
never sees half a run, also when the driver died between two table commits, and a rerun (a new attempt of the same
run id) replaces the old rows at the instant its runs row lands; the old attempt's rows are then deleted. Any engine
asks for exactly the committed rows with one join, e.g. DuckDB::

    SELECT f.* FROM delta_scan('s3://bucket/out/faces') f SEMI JOIN delta_scan('s3://bucket/out/runs') r
    USING (run_id, attempt)

Each data file holds one attempt of one run, so file statistics (min = max run_id) prune a read to one run's files.
The exact Arrow schema of the schema module (embedding widths, field docs, schema version) is kept in the table's
description, since Delta's own types cannot say ``fixed_size_list<float32>[D]``: data files hold those columns as
Delta's variable-length lists, the width in the field's metadata, so that an engine that takes the types from the
Delta log (Polars refuses a file whose type differs) reads them, and crossmatch's readers cast them back.

The package splits by verb, as delta-rs does: ``location`` (where tables are, how delta-rs is called), ``files``
(data files), ``commit`` (a run committed), ``read`` (committed rows), ``maintain`` (deleting and compacting). Its
names are importable from here.
"""

from ops.io.tables.commit import (
    COMMIT_ATTEMPTS,
    OutputRun,
    error_table,
)
from ops.io.tables.files import (
    FILE_BYTES,
    ROW_GROUP_BYTES,
    TableWriter,
    exact,
    file_schema,
    write_data_files,
)
from ops.io.tables.location import (
    DATA,
    LIST_SIZE,
    RUNS_TABLE,
    DataFile,
    check_run_id,
    delta_call,
    delta_options,
    delta_uri,
    new_attempt,
    open_table,
    table_schema,
    table_store,
)
from ops.io.tables.maintain import (
    compact,
    delete_run,
    tables_under,
)
from ops.io.tables.read import (
    committed_file_rows,
    committed_files,
    committed_rows,
    committed_runs,
    iter_table,
    read_table,
)

__all__ = [
    "COMMIT_ATTEMPTS",
    "DATA",
    "DataFile",
    "FILE_BYTES",
    "LIST_SIZE",
    "OutputRun",
    "ROW_GROUP_BYTES",
    "RUNS_TABLE",
    "TableWriter",
    "check_run_id",
    "committed_file_rows",
    "committed_files",
    "committed_rows",
    "committed_runs",
    "compact",
    "delete_run",
    "delta_call",
    "delta_options",
    "delta_uri",
    "error_table",
    "exact",
    "file_schema",
    "iter_table",
    "new_attempt",
    "open_table",
    "read_table",
    "table_schema",
    "table_store",
    "tables_under",
    "write_data_files",
]
