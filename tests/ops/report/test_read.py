"""ops.report.read: the runs a report selects, and what it reads for each section, from small committed runs."""

import hashlib

import pytest

from ops.io.errors import PreviewError
from ops.report import read


def test_a_source_rewritten_since_it_was_embedded_is_not_shown_beside_its_old_score(tmp_path):
    source = tmp_path / "clip.wav"
    source.write_bytes(b"the bytes that were embedded")
    row = {"uri": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert read._unchanged(row) == b"the bytes that were embedded"  # what a clip or a fallback face is cut from
    source.write_bytes(b"other bytes under the same name")  # cp -p, an edit in place
    with pytest.raises(PreviewError, match="has changed since it was embedded"):
        read._unchanged(row)
