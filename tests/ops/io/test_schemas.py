import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops.io.schemas import ERRORS, MANIFEST, SCHEMA_VERSION, TABLE_KEY, TABLES, VERSION_KEY, conform, schema_for


def test_every_schema_names_itself_and_its_version():
    for name, schema in TABLES.items():
        assert schema.metadata[TABLE_KEY] == name.encode()
        assert schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()
        assert "run_id" in schema.names


def test_conform_orders_casts_and_keeps_metadata(tmp_path):
    row = {
        "message": "m",
        "error_type": "E",
        "stage": "read",
        "sha256": None,
        "uri": "u",
        "job": "j",
        "run_id": "r",
        "extra": 1,
    }
    table = conform(pa.Table.from_pylist([row]), ERRORS)
    assert table.schema == ERRORS and table.schema.metadata == ERRORS.metadata
    pq.write_table(table, tmp_path / "e.parquet")
    assert pq.read_schema(tmp_path / "e.parquet").metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()


def test_conform_refuses_missing_columns_and_nulls():
    with pytest.raises(ValueError, match="missing columns"):
        conform(pa.table({"uri": ["u"]}), ERRORS)
    row = dict.fromkeys(ERRORS.names, "x") | {"uri": None}
    with pytest.raises(ValueError, match=r"nulls in required columns \['uri'\]"):
        conform(pa.Table.from_pylist([row]), ERRORS)


def test_schema_for():
    assert schema_for("manifest") is MANIFEST
    known = (
        "known: attributes, calibrations, changes, errors, evidence, face_sources, face_thumbnails, faces, fusions, "
        "identities, manifest, match_items, matches, persons, reviews, runs, styled, training, voices"
    )
    with pytest.raises(KeyError, match=known):
        schema_for("nope")
    assert schema_for("faces", 128).field("embedding").type == pa.list_(pa.float32(), 128)
    assert schema_for("faces") is None  # a sized table needs its width


def test_stored_rows_carry_their_attempt_after_the_run():
    from ops.io.schemas import RUNS, stored

    schema = stored(ERRORS)
    assert schema.names[:2] == ["run_id", "attempt"] and schema.metadata == ERRORS.metadata
    assert stored(RUNS) is RUNS and stored(schema) is schema
