"""Drawing a report: the plain data of ``ops.report.content`` as one self-contained HTML page.

Reads nothing: every thumbnail, clip and plot arrives as a data: URI from ``ops.report.read``, so the page opens in
any browser, from a laptop or a bucket, with no server, and a section can be drawn from literals. Every text from the
tables is escaped. A match is drawn green only where its decision says "the same person"; a score above the threshold
on evidence that does not favour it is drawn apart (amber), never as a match.
"""

from __future__ import annotations

import html
from collections import Counter
from datetime import UTC, datetime

import numpy as np

from ops.matching.calibration import describe
from ops.matching.decisions import BELOW_EVIDENCE, decide, is_positive, verbal
from ops.report.content import (
    Calibration,
    Evidence,
    FusedRun,
    Fusion,
    PersonsRun,
    Plot,
    Previews,
    Probes,
    Report,
    Sheets,
    preview_key,
    probe_table,
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: list[str], rows: list[list[str]], testid: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table data-testid="{testid}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def sections(report: Report) -> list[str]:
    """Every section of the report, in its order: runs, changes, counts, errors, calibration, each match run's
    probes, each identities run's contact sheets, each fused run, each persons run."""
    ev, previews = report.evidence, report.previews
    drawn = [runs_section(report.runs), changes_section(report.runs, report.removed), counts_section(ev)]
    drawn += [errors_section(ev), calibration_section(report.calibrations, report.fusions)]
    drawn += [matches_section(found, ev, previews) for found in report.probes]
    drawn += [identities_section(found, ev, previews) for found in report.sheets]
    drawn += [fused_section(run) for run in report.fused]
    drawn += [persons_section(run) for run in report.persons]
    return drawn


def runs_section(runs: list[dict]) -> str:
    """The runs behind the report: job, when, models, rows per table."""
    rows = []
    for m in sorted(runs, key=lambda m: m["committed_at"]):
        summary = m.get("summary", {})
        models = ", ".join(f"{_e(summary[k])}" for k in ("detector", "model") if isinstance(summary.get(k), str)) or _e(
            summary.get("model_name", "")
        )
        tables = ", ".join(f"{name} {t['rows']}" for name, t in m["tables"].items())
        rows.append([_e(m["run_id"]), _e(m["job"]), _e(m["committed_at"][:19]), models, _e(tables)])
    return "<h2>Runs</h2>" + _table(["run", "job", "committed (UTC)", "models", "rows"], rows, "runs")


def changes_section(runs: list[dict], removed: list[dict]) -> str:
    """What this run did not have to do again: the manifest's objects carried over unread against the previous
    snapshot (and what was new, modified or ``removed``), the embedding runs' sources reused from an earlier run,
    the match runs' queries whose lists were merged from an earlier run's rather than searched again."""
    rows = []
    for m in sorted(runs, key=lambda m: m["committed_at"]):
        summary = m.get("summary", {})
        if m["job"] == "manifest" and "previous_manifest" in summary:
            done = f"{summary['read']} read, {summary['carried']} carried over unread"
            changed = ", ".join(f"{summary[k]} {k}" for k in ("new", "modified", "removed"))
            rows.append([_e(m["run_id"]), _e(f"manifest {summary['previous_manifest']}"), _e(changed), _e(done)])
        elif summary.get("reused_from") and m["job"] == "calibrate":
            done = "the same labelled sample: its record copied"
            rows.append([_e(m["run_id"]), _e(f"calibrate {summary['reused_from']}"), "", _e(done)])
        elif summary.get("merged_from"):  # crossmatch counts per modality (voices_queries_searched, ...): summed
            total = {
                what: sum(v for k, v in summary.items() if k.endswith(what) and isinstance(v, int))
                for what in ("queries_searched", "queries_merged", "gallery_added", "gallery_removed")
            }
            changed = f"gallery: {total['gallery_added']} added, {total['gallery_removed']} removed"
            done = f"{total['queries_searched']} queries searched, {total['queries_merged']} merged"
            rows.append([_e(m["run_id"]), _e(f"{m['job']} {summary['merged_from']}"), _e(changed), _e(done)])
        elif summary.get("reused_from"):
            reused = summary.get("reused", 0)
            done = f"{summary.get('sources', 0) - reused} embedded, {reused} reused"
            rows.append([_e(m["run_id"]), _e(f"{m['job']} {summary['reused_from']}"), "", _e(done)])
    if not rows:
        return ""
    section = "<h2>Since the last run</h2>" + _table(["run", "compared with", "changes", "work"], rows, "changes")
    if removed:
        listed = "".join(f"<li>{_e(r['uri'])} <small>{_e(r['previous_sha256'][:12])}</small></li>" for r in removed)
        said = "Removed from the archive (no longer in this run's results)"
        section += f'<p>{said}:</p><ul data-testid="removed">{listed}</ul>'
    return section


def counts_section(ev: Evidence) -> str:
    """Inputs by kind, faces, speech and errors, as counted."""
    c = ev.counts
    shown: list[tuple[str, object]] = []
    if "manifest rows" in c:
        manifest_errors = sum(n for (job, _, _), n in ev.errors_by_type.items() if job == "manifest")
        shown.append(("inputs", c["manifest rows"] + manifest_errors))
        shown += [(f"{kind} files", n) for kind, n in sorted(ev.kinds.items())]
        shown += [("duplicates", c["duplicates"]), ("labelled", c["labelled"])]
    if "face rows" in c:
        shown += [(k, c.get(k, 0)) for k in ("sources with faces", "faces found", "face rows")]
    if "speech segments" in c:
        shown += [(k, c.get(k, 0)) for k in ("sources with speech", "speech segments")]
        shown.append(("speech seconds", round(c.get("speech seconds", 0.0), 1)))
    shown.append(("errors", ev.errors_total))
    cells = "".join(f'<div class="count"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in shown)
    return f'<h2>Counts</h2><div class="counts" data-testid="counts">{cells}</div>'


def errors_section(ev: Evidence) -> str:
    """Errors counted by job, stage and type, and the first listed one by one."""
    if not ev.errors_total:
        return '<h2>Errors</h2><p data-testid="errors">No errors: every input gave results.</p>'
    grouped = [[_e(j), _e(s), _e(t), str(n)] for (j, s, t), n in sorted(ev.errors_by_type.items())]
    listed = [[_e(job), _e(kind), _e(uri), _e(message)] for job, uri, kind, message in ev.errors_listed]
    rest = ev.errors_total - len(ev.errors_listed)
    more = f"<p>{rest} more in errors/.</p>" if rest > 0 else ""
    return (
        "<h2>Errors</h2>"
        + _table(["job", "stage", "error type", "count"], grouped, "errors")
        + "<details><summary>each error</summary>"
        + _table(["job", "error type", "input", "reason"], listed, "error-rows")
        + more
        + "</details>"
    )


def calibration_section(calibrations: list[Calibration], fusions: list[Fusion]) -> str:
    """Each calibration's figures, its score-to-log-LR map in words and its plots; then each fused calibration."""
    if not calibrations and not fusions:
        return '<h2>Calibration</h2><p data-testid="calibration">No calibration: the archive has no labels.</p>'
    parts = ["<h2>Calibration</h2>"]
    for found in calibrations:
        row, record = found.row, found.record
        rule = record.get("threshold_why") or f"at FAR {row['target_far']:g}"
        stats = (
            f"{_e(row['model_name'])} ({_e(row['model_sha256'][:12])}) on {_e(row['table'])}: "
            f"{row['sources']} labelled sources, {row['same_pairs']} genuine and {row['different_pairs']} impostor "
            f"pairs; AUC {row['auc']:.4f}, EER {row['eer']:.4f}; threshold {row['threshold']:.4f} "
            f'(<span data-testid="threshold-rule">{_e(rule)}</span>)'
        )
        llr = _llr_words(record)
        parts.append(
            f'<div data-testid="calibration-{_e(row["table"])}"><p>{stats}</p>{llr}{_plots(found.plots)}</div>'
        )
    parts += [_fusion_block(fusion) for fusion in fusions]
    return "".join(parts)


def _plots(plots: list[Plot]) -> str:
    return "".join(
        f'<img class="plot" data-testid="plot" alt="{p.name}" src="{p.src}">'
        if p.error is None
        else f'<span class="nopreview">{_e(p.name)} unavailable: {_e(p.error)}</span>'
        for p in plots
    )


def _llr_words(record: dict) -> str:
    """The record's score-to-log-LR map in words, when it has one (records before it did not)."""
    llr = record.get("llr")
    if not llr:
        return ""
    held = "" if llr.get("cllr_held_out") is None else f", {llr['cllr_held_out']:.3f} held out"
    return (
        f'<p data-testid="llr">As evidence: a score s is a log-likelihood ratio of {llr["slope"]:.2f} &times; s '
        f"{'+' if llr['offset'] >= 0 else '&minus;'} {abs(llr['offset']):.2f} (natural log; {_e(llr['method'])}). "
        f"Cllr {llr['cllr']:.3f} bits{held} "
        f"(0 is perfect, 1 is no information; {llr['min_cllr']:.3f} is the best any monotone map of these scores "
        f"could do). At the threshold the evidence is {_e(describe(llr['llr_at_threshold']))}"
        + (
            ": a score there is no match; a match needs a log-LR above --min-llr (0 unless the run sets it) too"
            if llr["llr_at_threshold"] <= 0
            else ""
        )
        + ".</p>"
    )


def _fusion_block(fusion: Fusion) -> str:
    record = fusion.record
    if record is None:
        return (
            f'<p class="nopreview">fused calibration {_e(fusion.row["record_uri"])} unavailable: {_e(fusion.error)}</p>'
        )
    systems = record["systems"]
    decider = f"fused {record['fusion']}"
    names = {"face": "face alone", "voice": "voice alone", "fused sum": "face and voice, sum of log-LRs"}
    names["fused linear"] = "face and voice, trained linear fusion"
    table = _table(
        ["system", "EER", "TAR at FAR 1e-2", "TAR at FAR 1e-3", "Cllr (bits)", "min Cllr"],
        [
            [
                _e(names[name]) + (" <b>(decides)</b>" if name == decider else ""),
                f"{100 * fig['eer']:.2f}%",
                f"{fig['tar_at_far_0.01']:.3f}",
                f"{fig['tar_at_far_0.001']:.3f}",
                f"{fig['cllr']:.3f}",
                f"{fig['min_cllr']:.3f}",
            ]
            for name, fig in systems.items()
        ],
        "fusion-figures",
    )
    models = record["models"]
    head = (
        f"<h3>Face and voice together</h3><p>{_e(models['faces']['model_name'])} faces and "
        f"{_e(models['voices']['model_name'])} voices, {record['identity_count']} identities ({_e(record['pairing'])}"
        + (": each the faces of one person joined to the voices of another" if record["pairing"] == "chimeric" else "")
        + f"), {record['same_trials']} same-identity and {record['different_trials']} different-identity trials, "
        f"every figure held out ({_e(record['held_out'])}).</p>"
    )
    threshold = record["llr_thresholds"]["fused"]
    fused = systems[decider]
    caveat = ""
    if fused.get("different_trials") and 1 / fused["different_trials"] > record["target_far"]:
        caveat = (
            f" Only {fused['different_trials']} different-identity trials were held out: a rate of "
            f"{record['target_far']:g} cannot be measured on them, so the threshold is the lowest that accepts none."
        )
    if fused.get("llr_at_far", threshold) < threshold:
        caveat += " It is raised to 0: evidence that favours different people is never accepted."
    words = (
        f"<p>A fused log-LR of {threshold:.2f} or more is accepted (false accept rate {record['target_far']:g} held "
        f"out): the face and voice evidence together are then at least {_e(describe(threshold))}.{caveat}</p>"
    )
    return f'<div data-testid="calibration-fused">{head}{table}{words}{_plots(fusion.plots)}</div>'


def fused_section(run: FusedRun) -> str:
    """A fused match run: verification's pairs, one line each; identification's probes, each with its top rows. The
    evidence of each is put in words."""
    marker, mode, first = run.marker, run.mode, run.first
    summary = marker.get("summary") or {}
    heading = "Verification" if mode == "verify" else "Identification"
    parts = [
        f"<h2>{heading}: face and voice together</h2>"
        f"<p>run {_e(marker['run_id'])}, {run.total} {'pairs' if mode == 'verify' else 'probes'}"
        + (f", the first {len(first)} shown" if len(first) < run.total else "")
        + f"; calibration {_e(summary.get('calibration', ''))} ({_e(summary.get('fusion', ''))} of log-LRs). "
        "A log-LR is the natural log of how many times more likely the evidence is if it is the same person.</p>"
    ]
    headers = ["rank", "against", "used", "face cosine (log-LR)", "voice cosine (log-LR)", "log-LR", "decision"]
    if mode == "verify":
        rows = [r for key in first for r in sorted(run.shown.get(key, []), key=lambda r: r["modalities"])]
        cells = [[f"<code>{_e(r['query'])}</code>", *_evidence_cells(r)[1:], _e(_statement(r, mode))] for r in rows]
        parts.append(_table(["pair", *headers[1:], "in words"], cells, "fused-rows"))
        return "".join(parts)
    for key in first:
        rows = sorted(run.shown.get(key, []), key=lambda r: r["rank"])
        parts.append(
            f'<section class="fused" data-testid="fused-probe"><p><code>{_e(key[0])}</code></p>'
            f'<p data-testid="fused-words">{_e(_statement(rows[0], mode))}</p>'
            + _table(headers, [_evidence_cells(r) for r in rows], "fused-rows")
            + "</section>"
        )
    return "".join(parts)


def _evidence_cells(r: dict) -> list[str]:
    def modality(score: float | None, llr: float | None) -> str:
        return "" if score is None else f"{score:.3f} ({llr:+.2f})"

    return [
        str(r["rank"]),
        f"<code>{_e(r['gallery'])}</code>",
        _e(r["modalities"]),
        modality(r["face_score"], r["face_llr"]),
        modality(r["voice_score"], r["voice_llr"]),
        f"<b>{r['llr']:+.2f}</b> (threshold {r['llr_threshold']:.2f})",
        _e(r["decision"] or ""),
    ]


def _statement(row: dict, mode: str) -> str:
    """The best row's evidence in words a reader can check against its log-LR."""
    which = {
        "face+voice": "The face and voice evidence together are",
        "face": "The face evidence alone (no voice to compare) is",
        "voice": "The voice evidence alone (no face to compare) is",
    }[row["modalities"]]
    if mode == "identify":
        words = describe(row["llr"], f"this is {row['gallery']}", "it is someone else")
    else:
        words = describe(row["llr"], f"this is the same person as {row['gallery']}", "it is someone else")
    return f"{which} {words}, at this calibration. Decision: {row['decision']}."


def matches_section(probes: Probes, ev: Evidence, previews: Previews) -> str:
    """A match run's shown probes, each with its preview, label and decision, and a card per match."""
    marker, by_query = probes.marker, probes.rows
    mode, table = probe_table(marker)
    min_llr = float(marker.get("config", {}).get("min_llr") or 0.0)
    shown = sorted(by_query)
    heading = {
        "search": "Top matches",
        "identify": "Identification",
        "verify": "Verification",
        "crossmatch": "Cross-modal matches",
    }.get(mode, mode)
    judged = (
        "; ".join(f"threshold {t:.4f} from {_e(src)}" for t, src in probes.thresholds) or "no threshold: ranked only"
    )
    parts = [
        f"<h2>{heading}: {_e(table)}</h2><p>run {_e(marker['run_id'])}, {probes.total} probes"
        + (f", the first {len(shown)} shown" if len(shown) < probes.total else "")
        + f"; {judged}.</p>"
    ]
    for query in shown:
        ranked = sorted(by_query[query], key=lambda r: r["rank"])
        first = ranked[0]
        label = ev.label(first["query_uri"])
        head = (
            f'<div class="probe-head">{preview(previews, table, query)}<div><code>{_e(query)}</code>'
            + (f"<br>label: <b>{_e(label)}</b>" if label else "")
            + (_attributes(ev, query) if table == "faces" else "")
            + f"<br><small>sha256 {_e(first['query_sha256'][:16])}</small>"
            + (
                f"<br>decision: <b data-testid='decision'>{_e(first['decision'])}</b>"
                + (f"<br><small>{_e(first['verbal'])}</small>" if first.get("verbal") else "")
                if first["decision"]
                else ""
            )
            + "</div></div>"
        )
        cards = "".join(match_card(r, table, mode, ev, previews, min_llr) for r in ranked)
        parts.append(
            f'<section class="probe" data-testid="probe" data-table="{_e(table)}" data-mode="{_e(mode)}">'
            f'{head}<div class="matches">{cards}</div></section>'
        )
    return "".join(parts)


def _card_decision(r: dict, mode: str, min_llr: float) -> str | None:
    """A row's decision as stored; for the rows the job leaves undecided (identify's ranks below 1), the same rule
    (``ops.matching.decisions.decide``) applied to the row's score, threshold and log-LR."""
    if r["decision"] is not None or r["threshold"] is None:
        return r["decision"]
    llr = None if r.get("llr") is None else np.array([r["llr"]])
    positive = r["identity"] if mode == "identify" else "match"
    return decide(np.array([r["score"]]), r["threshold"], llr, min_llr, positive, "no match")[0]


def match_card(
    r: dict, table: str, mode: str, ev: Evidence | None, previews: Previews | None, min_llr: float = 0.0
) -> str:
    """One match row as a card: what it matched, score, log-LR in words, the threshold, its decision and review."""
    threshold = r["threshold"]
    decision = _card_decision(r, mode, min_llr)
    # Green only for a decision that says "the same person": a score above the threshold on evidence that does
    # not favour it is shown apart, never as a match.
    verdict = (
        ""
        if decision is None
        else " above"
        if is_positive(decision)
        else (" undecided" if decision == BELOW_EVIDENCE else " below")
    )
    what = (
        f"<b>{_e(r['identity'])}</b>"
        if mode == "identify"
        else preview(previews, table, r["gallery_item"])
        + f"<code>{_e(r['gallery_item'])}</code>"
        + (_attributes(ev, r["gallery_item"]) if table == "faces" else "")
    )
    label = ev.label(r["gallery_uri"]) if r["gallery_uri"] else None
    if threshold is None:
        limit = "no threshold"
    elif decision == BELOW_EVIDENCE:
        limit = f"above the threshold {threshold:.3f}, {BELOW_EVIDENCE}"
    else:
        limit = f"{'match' if is_positive(decision) else 'no match'} at {threshold:.3f}"
    words = r.get("verbal") or (verbal(r["llr"]) if r.get("llr") is not None else None)
    return (
        f'<div class="match{verdict}" data-testid="match" data-decision="{_e(decision or "")}">'
        f'<span class="rank">#{r["rank"]}</span>{what}'
        + (f"<br>label: {_e(label)}" if label else "")
        + f'<br>score <b data-testid="score">{r["score"]:.3f}</b>'
        + (
            f' <small data-testid="llr" title="{_e(describe(r["llr"]))}">log-LR {r["llr"]:+.2f}</small>'
            f'<br><small data-testid="verbal">{_e(words)}</small>'
            if r.get("llr") is not None
            else ""
        )
        + f"<br><small>{limit}</small>"
        + _review_html(r.get("review"))
        + "</div>"
    )


def _review_html(mark: dict | None) -> str:
    """An analyst's latest verdict on the row: what, who, when and why."""
    if mark is None:
        return ""
    when = mark["reviewed_at"].strftime("%Y-%m-%d %H:%M UTC")
    note = f": {_e(mark['note'])}" if mark["note"] else ""
    return (
        f'<br><small class="review {_e(mark["verdict"])}" data-testid="review">'
        f"<b>{_e(mark['verdict'])}</b> by {_e(mark['reviewer'])}, {when}{note}</small>"
    )


def _attributes(ev: Evidence, item: str) -> str:
    words = ev.attributes.get(item)
    return f'<br><small data-testid="attributes">{_e(", ".join(words))}</small>' if words else ""


def preview(previews: Previews, table: str, item: str) -> str:
    """An item's face thumbnail or speech clip, or why there is none."""
    table, item = preview_key(table, item)
    if not previews.enabled:  # --no-previews: nothing cut from the media, only the uri and the scores
        return '<span class="nopreview">previews off (--no-previews)</span>'
    made = previews.made.get((table, item))
    if made is None or made.kind == "none":
        reason = "not read for this report" if made is None else made.reason
        return f'<span class="nopreview" title="{_e(reason)}">no preview: {_e(reason)}</span>'
    if made.kind == "face":
        seen = f"<small>track seen {made.span[0]:.1f}-{made.span[1]:.1f} s</small>" if made.span else ""
        return f'<img class="thumb" data-testid="thumb" alt="face in {_e(item)}" src="{made.src}">{seen}'
    span = f"{made.span[0]:.1f}-{made.span[1]:.1f} s"
    return (
        f'<audio class="clip" data-testid="clip" controls preload="none" src="{made.src}"></audio><small>{span}</small>'
    )


def identities_section(sheets: Sheets, ev: Evidence, previews: Previews) -> str:
    """An identities run as contact sheets: each identity's size, cohesion, labels and shown members."""
    marker, summary = sheets.marker, sheets.marker.get("summary", {})
    table = summary.get("table", "faces")
    scored = (
        f"; against the labels of {summary.get('labelled_items', '?')} of the {summary.get('items', 0)} items: "
        f"{summary['found_identities']} found for {summary['true_identities']} people, "
        f"BCubed F {summary['bcubed_f']:.3f}, pairwise F {summary['pairwise_f']:.3f}"
        if "bcubed_f" in summary
        else ""
    )
    warnings = "".join(f"<li>{_e(w)}</li>" for w in summary.get("warnings", []))
    parts = [
        f"<h2>Who is in the archive: {_e(table)}</h2><p>run {_e(marker['run_id'])}: {summary.get('items', 0)} items "
        f"in {sheets.total} identities ({summary.get('singletons', 0)} of one) by {_e(summary.get('method', ''))} "
        f"at {summary.get('threshold', 0):.3f} over search {_e(summary.get('search_run_id', ''))}"
        + (f", the {len(sheets.members)} largest shown" if len(sheets.members) < sheets.total else "")
        + f"{scored}.</p>"
        + (f'<ul class="warnings" data-testid="identity-warnings">{warnings}</ul>' if warnings else "")
    ]
    for identity, members in sheets.members.items():
        first = members[0]
        cohesion = "" if first["cohesion"] is None else f", cohesion {first['cohesion']:.3f}"
        labels = Counter(ev.label(m["uri"]) for m in members if ev.label(m["uri"]))
        named = f"<br>labels: {_e(', '.join(f'{k} ({n})' for k, n in labels.most_common()))}" if labels else ""
        cards = "".join(
            f'<div class="match{" above" if m["representative"] else ""}" data-testid="member">'
            f"{preview(previews, table, m['item'])}<code>{_e(m['item'])}</code>"
            f"{_attributes(ev, m['item']) if table == 'faces' else ''}"
            f"<br><small>confidence {m['confidence']:.2f}{' · representative' if m['representative'] else ''}</small>"
            "</div>"
            for m in members
        )
        more = first["size"] - len(members)
        parts.append(
            f'<section class="probe" data-testid="identity" data-table="{_e(table)}"><div class="probe-head"><div>'
            f"<code>{_e(identity)}</code><br><b>{first['size']}</b> members{cohesion}{named}"
            + (f"<br><small>{more} more in identities/</small>" if more > 0 else "")
            + f'</div></div><div class="matches">{cards}</div></section>'
        )
    return "".join(parts)


def persons_section(run: PersonsRun) -> str:
    """A persons run: each candidate's face and voice identity, whether they are linked and the spans that say so."""
    marker, summary = run.marker, run.marker.get("summary", {})
    cells = []
    for r in run.rows:
        spans = "<br>".join(f"{_e(e['uri'])} {e['start']:.1f}-{e['end']:.1f} s" for e in r["evidence"][:5])
        spans += f"<br><small>{len(r['evidence']) - 5} more spans</small>" if len(r["evidence"]) > 5 else ""
        decision = f"<b>{_e(r['person'])}</b>" if r["linked"] else f"not linked: {_e(r['reason'])}"
        cells.append(
            [
                decision,
                _e(r["face_identity"]),
                _e(r["voice_identity"]),
                f"{r['link_score']:.2f}",
                f"{r['seconds']:.1f} s in {r['videos']} videos",
                spans,
            ]
        )
    said = (
        f"<p>run {_e(marker['run_id'])}: {summary.get('persons', 0)} persons from {summary.get('candidates', 0)} "
        f"candidates. Speech segments in videos with faces: {summary.get('segments_decided', 0)} with one face on "
        f"screen (evidence), {summary.get('segments_undecided', 0)} with several (undecided), "
        f"{summary.get('segments_unseen', 0)} with nobody seen.</p>"
    )
    headers = ["person", "face identity", "voice identity", "link score", "together", "evidence"]
    return "<h2>Persons: faces and voices</h2>" + said + _table(headers, cells, "persons")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;
vertical-align:top}th{background:#f4f4f4}
.counts{display:flex;flex-wrap:wrap;gap:.5em}.count{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;
min-width:7em}.count b{display:block;font-size:1.4em}
.probe{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em;display:flex;gap:1em;align-items:flex-start}
.probe-head{display:flex;gap:.6em;min-width:18em;max-width:18em;word-break:break-all}
.matches{display:flex;flex-wrap:wrap;gap:.6em}.match{border:1px solid #ddd;border-radius:4px;padding:.4em;
width:11em;word-break:break-all}.match.above{border-color:#2a7;background:#f1fbf5}.match.below{opacity:.8}
.match.undecided{border-color:#c90;background:#fffaf0}.review.confirmed{color:#175}.review.rejected{color:#a33}.warnings{color:#a50;font-weight:600}
.rank{float:right;color:#888}.thumb{display:block;max-width:96px;max-height:96px;border-radius:3px}
.clip{width:10em;display:block}.plot{max-width:420px;margin-right:1em}.nopreview{color:#a33;font-size:.85em}
code{font-size:.85em}
"""


def page(title: str, drawn: list[str]) -> str:
    """The whole page: its title, when it was written, how to read a score, and the ``drawn`` sections."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1><p>Written {made}. Scores are cosine "
        "similarities of L2-normalised embeddings; a match is a score at or above the threshold shown with it whose "
        "calibrated log-likelihood ratio, where there is a calibration, favours the same person (green); a score "
        "above the threshold on evidence that does not is shown apart (amber), never as a match.</p>"
        + "".join(drawn)
        + "</body></html>"
    )
