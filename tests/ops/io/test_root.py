import pytest

from ops.io.errors import JobFailed
from ops.io.root import MARKER, claim, inside, is_ours, locate, require_ours
from ops.io.storage import resolve
from ops.io.tables import OutputRun


def test_a_root_is_ours_by_its_marker_or_its_runs_table(tmp_path):
    fresh = resolve(str(tmp_path / "fresh"))
    assert not is_ours(fresh)
    claim(fresh)
    assert is_ours(fresh) and fresh.join(MARKER).exists()
    older = resolve(str(tmp_path / "older"))  # made before the marker: its runs table says whose it is
    run = OutputRun(older, "r", "manual")
    run.commit()
    assert is_ours(older)
    claim(older)  # adopted, and marked
    assert older.join(MARKER).exists()


def test_parquet_at_the_top_of_a_root_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "export.parquet").write_bytes(b"PAR1")
    (tmp_path / "photos").mkdir()  # plain folders (an archive, inputs) do not make a root another tool's
    with pytest.raises(JobFailed, match=r"holds data crossmatch did not write \(export.parquet\)"):
        claim(resolve(str(tmp_path)))
    with pytest.raises(JobFailed, match="not a crossmatch output root"):
        require_ours(resolve(str(tmp_path)))
    (tmp_path / "export.parquet").unlink()
    claim(resolve(str(tmp_path)))


def test_an_output_that_is_a_file_or_cannot_be_written_is_refused_with_the_fix(tmp_path, monkeypatch):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(JobFailed, match="is a file, not a folder"):
        claim(resolve(str(tmp_path / "results")))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("os.makedirs", denied)  # as a read-only folder is to anyone but root
    with pytest.raises(JobFailed, match="cannot write into the output root .*Permission denied"):
        claim(resolve(str(tmp_path / "new")))


def test_paths_inside_a_root_are_kept_relative_to_it(tmp_path, monkeypatch):
    root = resolve(str(tmp_path / "results"))
    assert (
        inside(root, str(tmp_path / "results" / "calibration" / "c1" / "record.json")) == "calibration/c1/record.json"
    )
    assert inside(root, str(tmp_path / "results")) == "."
    assert inside(root, str(tmp_path / "archive")) == str(tmp_path / "archive")  # elsewhere: whole
    assert inside(root, str(tmp_path / "results-2" / "x")) == str(tmp_path / "results-2" / "x")  # not a prefix match
    monkeypatch.chdir(tmp_path)
    assert inside(root, "archive") == str(tmp_path / "archive")  # a relative path is made absolute, never kept
    assert inside(root, "s3://bucket/results/x") == "s3://bucket/results/x"
    assert locate(root, "calibration/c1/record.json").path == str(
        tmp_path / "results" / "calibration" / "c1" / "record.json"
    )
    assert locate(root, ".") == root and locate(root, None) == root
    assert locate(root, str(tmp_path / "archive")).path == str(tmp_path / "archive")


def test_a_runs_row_keeps_the_locations_inside_its_root_relative(tmp_path):
    """A results folder copied or moved elsewhere still names its own tables, not the old place."""
    root = resolve(str(tmp_path / "results"))
    run = OutputRun(root, "r", "manual")
    config = {"queries": root.uri, "archive": str(tmp_path / "photos"), "pairs": root.join("pairs.csv").uri, "k": 5}
    marker = run.commit(config=config)
    assert marker["config"] == {"queries": ".", "archive": str(tmp_path / "photos"), "pairs": "pairs.csv", "k": 5}
