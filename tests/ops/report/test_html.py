"""ops.report.html: a report drawn from plain data alone, as ops.report.read hands it over; no storage anywhere."""

from ops.matching.decisions import BELOW_EVIDENCE
from ops.report import html


def test_a_score_above_the_threshold_on_evidence_against_is_never_shown_as_a_match():
    row = {"rank": 1, "score": 0.86, "threshold": 0.8, "identity": "ann", "gallery_uri": None, "gallery_item": "ann"}

    def card(**change) -> str:
        return html.match_card(row | {"verbal": None} | change, "faces", "identify", None, None)

    below = card(decision=BELOW_EVIDENCE, llr=-0.9)
    assert 'class="match undecided"' in below and "weak support for different people" in below
    assert "above the threshold 0.800, below the evidence needed" in below
    matched = card(decision="ann", llr=2.5)
    assert 'class="match above"' in matched and "moderate support for the same person" in matched
    # A rank below 1 carries no decision of its own: the card applies the rule to its score and log-LR.
    assert 'class="match undecided"' in card(rank=2, decision=None, llr=-0.2)
    assert 'class="match above"' in card(rank=2, decision=None, llr=0.2)
