"""What a report shows, as plain data: ``read`` fills these from the committed tables, ``html`` draws them.

Nothing here holds a store or reads one: every value is a marker, a row as a dict, a number or a string (thumbnails,
clips and plots as data: URIs), so drawing a report needs no storage and a test can draw one from literals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ops.matching import items


@dataclass
class Evidence:
    """The counts of the selected runs, their errors, the runs the sections draw, and what is known of the sources
    shown (labels, media categories, face attributes, analysts' reviews)."""

    runs: list[dict]
    counts: dict[str, object] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)
    errors_by_type: Counter = field(default_factory=Counter)
    errors_listed: list[tuple] = field(default_factory=list)  # (job, uri, error_type, message), the first by job, uri
    errors_total: int = 0
    calibrations: list[tuple[dict, dict]] = field(default_factory=list)  # (marker, row)
    fusions: list[tuple[dict, dict]] = field(default_factory=list)  # (marker, row) of fused calibrations
    matches: list[dict] = field(default_factory=list)  # the match runs' markers
    fused: list[dict] = field(default_factory=list)  # the fused match runs' markers (rows in evidence/)
    identities: list[dict] = field(default_factory=list)  # the identities runs' markers
    persons: list[dict] = field(default_factory=list)  # the persons runs' markers
    sources: dict[str, dict] = field(default_factory=dict)  # manifest rows of the uris shown
    attribute_runs: list[dict] = field(default_factory=list)  # the attributes runs' markers
    attributes: dict[str, list[str]] = field(default_factory=dict)  # face item -> its attributes, as words
    # Runs outside the selection that its match runs read: for the other side's pictures and labels.
    referenced: list[dict] = field(default_factory=list)
    # The newest analyst's mark of each reviewed match row: (match run, query item, gallery item) -> its reviews/ row.
    reviews: dict[tuple[str, str, str], dict] = field(default_factory=dict)

    def category(self, uri: str) -> str:
        """The source's media category from its manifest row (an image when the report read none)."""
        return self.sources.get(uri, {}).get("media_category", "image")

    def label(self, uri: str) -> str | None:
        """The source's label from its manifest row, if it has one."""
        return self.sources.get(uri, {}).get("label")


def probe_table(marker: dict) -> tuple[str, str]:
    """A match run's mode and what its section calls its table (a cross-modal run ranks both)."""
    config = marker.get("config", {})
    mode, table = config.get("mode", "search"), config.get("table", "faces")
    return mode, "voices and faces" if mode == "crossmatch" else table


@dataclass
class Probes:
    """One match run's probes as the report shows them: how many there are, the first ``limit`` by item key with
    every row of theirs, and the thresholds its rows were judged by."""

    marker: dict
    total: int
    rows: dict[str, list[dict]]  # query item -> its rows, for the shown probes (each with its latest "review")
    thresholds: list[tuple[float, str]]

    def uris(self) -> set[str]:
        """The sources of the shown rows, both sides."""
        return {u for rows in self.rows.values() for r in rows for u in (r["query_uri"], r["gallery_uri"]) if u}

    def previewed(self) -> list[tuple[str, str]]:
        """The (table, item) of every preview the section shows: each probe's, and each match's but
        identification's (whose matches are identities, not items)."""
        mode, table = probe_table(self.marker)
        shown = []
        for query in sorted(self.rows):
            shown.append((table, query))
            if mode != "identify":
                shown += [(table, r["gallery_item"]) for r in sorted(self.rows[query], key=lambda r: r["rank"])]
        return shown


@dataclass
class Sheets:
    """One identities run as contact sheets: the largest identities, each with its representative first and then its
    surest members."""

    marker: dict
    total: int
    members: dict[str, list[dict]]  # identity -> its shown members, the representative first

    def uris(self) -> set[str]:
        """The sources of the shown members."""
        return {r["uri"] for rows in self.members.values() for r in rows}

    def previewed(self) -> list[tuple[str, str]]:
        """The (table, item) of every member shown."""
        table = self.marker.get("summary", {}).get("table", "faces")
        return [(table, m["item"]) for members in self.members.values() for m in members]


@dataclass
class Plot:
    """A calibration plot as a PNG data: URI, or why it could not be read."""

    name: str
    src: str | None = None
    error: str | None = None


@dataclass
class Calibration:
    """A calibrations/ row, its record (empty when it could not be read) and its plots."""

    marker: dict
    row: dict
    record: dict
    plots: list[Plot]


@dataclass
class Fusion:
    """A fusions/ row and its record with its plots, or why the record could not be read."""

    marker: dict
    row: dict
    record: dict | None
    error: str | None = None
    plots: list[Plot] = field(default_factory=list)


@dataclass
class FusedRun:
    """A fused match run's first pairs (verify: (query, gallery)) or probes (identify: (query, "")), each with its
    evidence/ rows, and how many there are in all."""

    marker: dict
    mode: str
    total: int
    first: list[tuple[str, str]]
    shown: dict[tuple[str, str], list[dict]]


@dataclass
class PersonsRun:
    """A persons run and its candidates shown: the linked first, the longest together first."""

    marker: dict
    rows: list[dict]


@dataclass
class Preview:
    """One item's preview: a face thumbnail ("face") or a speech clip ("clip") as a data: URI, or the reason there is
    none ("none"). ``span`` is a face track's sighting or the clip's stretch, in seconds."""

    kind: str
    src: str = ""
    span: tuple[float, float] | None = None
    reason: str = ""


def preview_key(table: str, item: str) -> tuple[str, str]:
    """Which preview an item shows: a cross-modal item names its modality, and shows its source in that table."""
    named = items.parse(item)
    if named.modality:
        return "voices" if named.modality == "voice" else "faces", named.uri
    return table, item


@dataclass
class Previews:
    """The previews of the items shown, by ``preview_key``; none when previews are off (--no-previews)."""

    enabled: bool
    made: dict[tuple[str, str], Preview] = field(default_factory=dict)
    failed: int = 0  # previews that could not be made: their reason is shown instead


@dataclass
class Report:
    """Everything one report shows, in the order of its sections."""

    runs: list[dict]
    evidence: Evidence
    removed: list[dict]  # objects removed from the archive since the previous manifest: uri, previous_sha256
    calibrations: list[Calibration]
    fusions: list[Fusion]
    probes: list[Probes]
    sheets: list[Sheets]
    fused: list[FusedRun]
    persons: list[PersonsRun]
    previews: Previews

    @property
    def probes_shown(self) -> int:
        """Probes shown with their matches, over every match run."""
        return sum(len(p.rows) for p in self.probes)
