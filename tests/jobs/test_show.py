"""jobs.show prints what a root holds as a person reads it."""

from jobs import show
from ops.io.storage import resolve
from ops.io.tables import OutputRun


def test_uris_are_shown_whole_and_nothing_committed_exits_2(tmp_path, capsys):
    long = "/archive/" + "a-folder-with-a-long-name/" * 4 + "face.jpg"  # longer than any column cut
    run = OutputRun(resolve(str(tmp_path)), "r", "manual")
    run.write_errors([{"uri": long, "sha256": "0" * 64, "error_type": "read_error", "message": "x"}], stage="t")
    run.commit()
    assert show.main([str(tmp_path)]) == 0
    assert long in capsys.readouterr().out
    assert show.main([str(tmp_path / "nothing")]) == 2
    assert "nothing committed" in capsys.readouterr().err
