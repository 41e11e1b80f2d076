import logging

from jobs.runtime.progress import Progress


def test_progress_reports(caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    progress = Progress("hashed", total=4, total_bytes=4 << 20, every=3600)
    progress.update(2, 2 << 20)
    assert "hashed" not in caplog.text  # not yet: at most every hour here
    progress.update(2, 2 << 20)
    assert "hashed: 4/4 (100%), 4.0/4.0 MiB" in caplog.text
