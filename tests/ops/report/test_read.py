"""ops.report.read: the runs a report selects, and what it reads for each section, from small committed runs."""

import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ops.io.errors import JobFailed, PreviewError
from ops.io.schemas import faces, schema_for
from ops.io.storage import resolve
from ops.io.tables import OutputRun, committed_runs
from ops.report import read
from ops.report.content import Evidence, preview_key


def _filled(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    """Rows of ``schema`` with every column not given a neutral value (null where it may be)."""

    def neutral(f: pa.Field):
        if f.nullable:
            return None
        if pa.types.is_string(f.type):
            return ""
        if pa.types.is_fixed_size_list(f.type):
            return [0.0] * f.type.list_size
        return 0

    return pa.Table.from_pylist([{f.name: r.get(f.name, neutral(f)) for f in schema} for r in rows], schema=schema)


def _commit(root, run_id: str, job: str, tables: dict[str, pa.Table] | None = None, **info) -> None:
    run = OutputRun(root, run_id, job)
    for name, data in (tables or {}).items():
        i = data.schema.get_field_index("run_id")
        data = data.set_column(i, data.schema.field(i), pa.array([run_id] * data.num_rows, pa.string()))
        run.write(name, data, data.schema)
    run.commit(**info)


def test_select_runs_takes_a_pipeline_runs_stages_or_the_newest_of_each_job(tmp_path):
    root = resolve(str(tmp_path))
    search = {"mode": "search", "table": "faces"}
    _commit(root, "pl.manifest", "manifest", config={})
    _commit(root, "pl.search-faces", "match", config=search)
    _commit(root, "later.search-faces", "match", config=search)  # the newest of its kind
    _commit(root, "later.search-voices", "match", config=search | {"table": "voices"})
    _commit(root, "pl.report", "report", config={})  # never reported on
    assert sorted(m["run_id"] for m in read.select_runs(root, "pl")) == ["pl.manifest", "pl.search-faces"]
    newest = sorted(m["run_id"] for m in read.select_runs(root, None))
    assert newest == ["later.search-faces", "later.search-voices", "pl.manifest"]
    with pytest.raises(JobFailed, match="no committed stage of pipeline run nope"):
        read.select_runs(root, "nope")
    with pytest.raises(JobFailed, match="no committed runs"):
        read.select_runs(resolve(str(tmp_path / "empty")), None)


def test_records_and_plots_that_cannot_be_read_say_why(tmp_path):
    root = resolve(str(tmp_path))
    png = b"\x89PNG a plot"
    root.join("calibration", "cal", "roc.png").put_atomic(png)  # scores.png missing, and both records
    record_uri = "calibration/cal/record.json"
    calibrations = _filled(schema_for("calibrations"), [{"table": "faces", "record_uri": record_uri}])
    fusions = _filled(schema_for("fusions"), [{"record_uri": record_uri}])
    _commit(root, "cal", "calibrate", {"calibrations": calibrations, "fusions": fusions})
    ev = read.read_evidence(root, committed_runs(root))
    (calibration,) = read.read_calibrations(root, ev)
    assert calibration.record == {} and calibration.row["table"] == "faces"
    roc, scores = calibration.plots
    assert roc.src == "data:image/png;base64,iVBORyBhIHBsb3Q=" and roc.error is None
    assert scores.src is None and "scores.png" in scores.error
    (fusion,) = read.read_fusions(root, ev)
    assert fusion.record is None and "record.json" in fusion.error and fusion.plots == []


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG")
    return out.getvalue()


def test_a_face_without_a_thumbnail_is_cut_from_its_source_only_while_it_is_unchanged(tmp_path):
    root = resolve(str(tmp_path / "results"))
    sources = [tmp_path / "kept.jpg", tmp_path / "edited.jpg"]
    for seed, path in enumerate(sources):
        path.write_bytes(_jpeg(seed))
    rows = [
        {"uri": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "box": [8.0, 8.0, 40.0, 40.0]}
        for p in sources
    ]
    # An embed run from before thumbnails were kept: the report must cut the face from the source itself.
    _commit(root, "f", "embed_faces", {"faces": _filled(faces(4), rows)})
    sources[1].write_bytes(_jpeg(7))  # rewritten since it was embedded
    ev = read.read_evidence(root, committed_runs(root))
    keys = [preview_key("faces", f"{p}#frame=0&face=0") for p in sources]
    keys += [("faces", f"{sources[0]}#frame=0&face=5"), ("voices", str(sources[0]))]
    previews = read.read_previews(root, ev, {str(p) for p in sources}, keys, thumb_size=32, clip_seconds=4.0)
    kept, edited, no_face, no_speech = (previews.made[k] for k in keys)
    assert kept.kind == "face" and kept.src.startswith("data:image/jpeg;base64,")
    assert edited.kind == "none" and "has changed since it was embedded" in edited.reason
    assert no_face.reason == "no face row for this item" and no_speech.reason == "no speech segment for this item"
    assert previews.failed == 3
    off = read.read_previews(root, ev, {str(p) for p in sources}, keys, 32, 4.0, enabled=False)
    assert not off.enabled and off.made == {} and off.failed == 0  # --no-previews: nothing cut from the media


def test_a_source_rewritten_since_it_was_embedded_is_not_shown_beside_its_old_score(tmp_path):
    source = tmp_path / "clip.wav"
    source.write_bytes(b"the bytes that were embedded")
    row = {"uri": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert read._unchanged(row) == b"the bytes that were embedded"  # what a clip or a fallback face is cut from
    source.write_bytes(b"other bytes under the same name")  # cp -p, an edit in place
    with pytest.raises(PreviewError, match="has changed since it was embedded"):
        read._unchanged(row)


def test_evidence_reads_an_empty_selection_as_nothing_to_count(tmp_path):
    ev = read.read_evidence(resolve(str(tmp_path)), [])
    assert ev == Evidence([]) and ev.label("/any.jpg") is None and ev.category("/any.jpg") == "image"
