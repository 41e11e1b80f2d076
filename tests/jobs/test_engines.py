"""Every engine reads the same committed rows of the pipeline's tables: crossmatch's reader, DuckDB (``ops.io.sql``)
and Polars, every column of every row, after a rerun that left its superseded attempt's files in the table and
beside attempts whose runs row never landed."""

import shutil
from dataclasses import fields

import polars as pl
import pyarrow as pa

import ops.io.tables as tables
from jobs import match
from jobs.runtime.launch import launch
from ops.io.root import LOCATIONS, locate
from ops.io.sql import committed, connect
from ops.io.storage import resolve
from ops.io.tables import OutputRun, commit, committed_runs, open_table, read_table, table_schema

# Each table's rows sorted by a key that is unique in it, so that rows are compared one to one.
KEYS = {
    "manifest": ["run_id", "uri"],
    "faces": ["run_id", "uri", "frame_index", "face_index"],
    "voices": ["run_id", "uri", "level", "segment_index"],
    "matches": ["run_id", "query_item", "rank", "gallery_item", "identity"],
}
# The committed run each table gets an uncommitted attempt of (the same run id, another attempt).
RUN_OF = {"manifest": "pl.manifest", "faces": "pl.faces", "voices": "pl.voices", "matches": "pl.search-voices"}
RERUN = "pl.search-faces"


def as_schema(data: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    """An engine's rows in the table's exact Arrow types, sorted by the table's key.

    DuckDB and Polars read Delta's types, not the exact ones crossmatch keeps in the table's description: embeddings,
    boxes and landmarks as variable-length lists (Delta has no fixed width: DuckDB ``list<l: float>``, Polars
    ``large_list<item: float>``), strings as ``large_string`` (Polars), and timestamps in microseconds (Delta's one
    unit) where manifest's ``modified`` is milliseconds, in DuckDB's session time zone (set to New York below) where
    the schema says UTC: a zone is metadata over the same instants. The cast back is safe: a list of another width,
    or a timestamp with digits below the millisecond, fails it rather than being rounded."""
    plain = pa.schema([f.with_nullable(True) for f in schema])  # engines report every column nullable
    return data.select(schema.names).cast(plain).sort_by([(k, "ascending") for k in KEYS[table]])


def pairs(data: pa.Table) -> set[tuple[str, str]]:
    return set(zip(data.column("run_id").to_pylist(), data.column("attempt").to_pylist(), strict=True))


def uncommitted(root, run_id: str, table: str, rows: pa.Table, monkeypatch) -> str:
    """``rows`` committed to ``table`` as an attempt of ``run_id`` whose runs row never lands (the driver died
    between the table's commit and the runs row's): its attempt."""
    run = OutputRun(root, run_id, "test")
    rows = rows.set_column(rows.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * rows.num_rows))
    run.write(table, rows, table_schema(open_table(root, table)))
    with monkeypatch.context() as patch:
        patch.setattr(commit, "_replace_run_row", lambda *a, **k: None)
        run.commit()
    return run.attempt


def test_crossmatch_duckdb_and_polars_read_every_column_of_the_committed_rows_alike(
    pipeline_run, tmp_path, monkeypatch
):
    copy = tmp_path / "results"
    shutil.copytree(pipeline_run["results"], copy)  # the session's own results stay as the other tests expect
    root = resolve(str(copy))
    before = {m["run_id"]: m for m in committed_runs(root)}

    # A rerun of the faces search with the committed run's own settings (its locations in the copy): the same run
    # id, a new attempt, whose driver died after its runs row landed and before the old attempt's files left the
    # tables (what a failed clean-up leaves too): those files are still in matches/, and must count nowhere.
    settings = {f.name for f in fields(match.MatchConfig)}
    config = {k: v for k, v in before[RERUN]["config"].items() if k in settings}
    config |= {k: locate(root, v).uri for k, v in config.items() if k in LOCATIONS and isinstance(v, str) and v}
    with monkeypatch.context() as patch:
        patch.setattr(tables.OutputRun, "_superseded", lambda self, files: [])
        rerun = launch(match.JOB, match.run, match.MatchConfig(**config))
    superseded = (RERUN, before[RERUN]["attempt"])
    assert rerun["attempt"] != superseded[1]

    # Attempts committed to each table whose runs row never landed: another attempt of a committed run, and a run
    # that is nowhere in runs, each with a copy of the committed rows (a leak shows as rows twice).
    hidden = {table: set() for table in KEYS}
    hidden["matches"].add(superseded)
    for table, run_id in RUN_OF.items():
        rows = read_table(root, table, run_id)
        hidden[table].add((run_id, uncommitted(root, run_id, table, rows, monkeypatch)))
        hidden[table].add(("ghost", uncommitted(root, "ghost", table, rows, monkeypatch)))

    runs = {m["run_id"]: m for m in committed_runs(root)}
    assert runs.keys() == before.keys() and runs[RERUN]["attempt"] == rerun["attempt"]
    counted = {(m["run_id"], m["attempt"]) for m in runs.values()}
    con = connect()
    con.execute("SET TimeZone = 'America/New_York'")  # a reader elsewhere: DuckDB gives timestamps in its zone
    runs_pl = pl.read_delta(str(copy / "runs")).select("run_id", "attempt")
    for table in KEYS:
        schema = table_schema(open_table(root, table))  # the exact types, with the attempt column
        everything = pl.read_delta(str(copy / table))
        held = set(everything.select("run_id", "attempt").unique().rows())
        wanted = {p for p in held if p in counted}
        assert hidden[table] <= held, table  # in the table's files: what a reader without the join would see
        ours = as_schema(read_table(root, table, columns=schema.names), schema, table)
        expected_rows = sum(m["tables"].get(table, {}).get("rows", 0) for m in runs.values())
        assert ours.num_rows == expected_rows > 0, table
        key = ours.select(KEYS[table]).to_pylist()
        assert len({tuple(r.values()) for r in key}) == ours.num_rows, f"{table}: key {KEYS[table]} is not unique"
        assert pairs(ours) == wanted and not pairs(ours) & hidden[table], table
        if table == "matches":  # the rerun's rows in place of the superseded ones
            assert (RERUN, rerun["attempt"]) in pairs(ours)
        engines = {
            "duckdb": con.execute(committed(str(copy), table)).fetch_arrow_table(),
            "polars": everything.join(runs_pl, on=["run_id", "attempt"], how="semi").to_arrow(),
        }
        for engine, data in engines.items():
            theirs = as_schema(data, schema, table)
            assert theirs.num_rows == ours.num_rows, (table, engine)
            for name in schema.names:  # column by column, exactly: every engine reads the same Parquet values
                assert theirs.column(name).equals(ours.column(name)), (table, engine, name)
    # the columns that need care are really there, with values: embeddings, a timestamp, nulls
    faces = read_table(root, "faces")
    assert faces.schema.field("embedding").type.list_size == 128 and faces.num_rows > 0
    assert read_table(root, "voices").column("embedding").null_count > 0
    assert read_table(root, "manifest").column("modified").null_count == 0
