"""jobs.identities: who is in an archive: the items of a search clustered into identities.

    python -m jobs.identities [RESULTS] --search-run-id RUN [--method whispers|components] [--threshold T] [--full]

The graph is a committed search of one set against itself (``jobs.match search``, typically ``--per-source``): an
item's exact top-K list, kept where a score reaches the threshold, gives its edges, so the graph costs nothing more
than the search (and a nightly search by difference keeps it current). Two clusterings (``ops.matching.clustering``):
Chinese whispers (the default: a stray link between two people does not merge them) and connected components (every
link merges: for a strict threshold). The threshold is --threshold, else the one the search rows carry (a
calibration's or the model card's); the job refuses without one. The faces of one video track are must-linked:
clustered as one node (``clustering.contract``), so a track that turns its head stays one person. A speech segment
is one item already, so a speaker's turn is never split. The analysts' verdicts kept under RESULTS (``jobs.review``,
each pair's newest; --reviews-through RUN: those up to that review run; --no-reviews: none) are constraints: a
confirmed pair is must-linked as a track is, a rejected pair loses its link and its two sides never end in one
identity (an identity that holds both is built again from its own links, strongest first, never joining the two:
``clustering.keep_apart``). A verdict names an item with its content's sha256: a file changed since is not bound by
it. The summary counts the verdicts applied and the identities they split, and warns where they contradict each
other (a rejected pair joined by confirmed ones).

A Ray task reads the run's items (``match_items/``) and lists (``matches/``, three columns), clusters, and writes
``identities/``: a row per member with the identity (``id-`` and a hash of its sorted members when founded), its size,
whether it is the identity's representative (of the members mostly linked inside it, the clearest face or the longest
speech), the identity's cohesion (mean edge score) and the member's confidence (share of its edge weight inside its
identity, times, where the search carries calibrated log-LRs, the posterior of its strongest link inside). A link is
a match: above the threshold and, with log-LRs, above --min-llr (0). The run warns (log, summary, report) when an
identity holds several labels, when one identity holds most items, or when the threshold keeps nearly every link.
With --separate-labels (the pipeline's), the threshold is raised just above the strongest link between two
differently labelled items (of faces, those alone in their source: a group photo's faces do not all carry its label),
so that the labelled sample shows no merge of two labels by a direct link; an identity that still holds two (linked
through unlabelled items) is warned about as above. Items with no edge are identities
of one. With labels (the manifest's; --manifest-run-id), the clustering is scored: BCubed and pairwise precision,
recall and F over the labelled items (how many of all, said with them), and identities found against the true
number. The driver holds counts.

Night after night: the newest identities run with the same key (table, whole sources or items, method, threshold,
model) is the previous one. Its items (same key, same content) keep their identities, and whispers moves only the
new items: each joins the identity its links weigh most or founds one, so the archive is not clustered again and
nobody moves under an analyst's feet. Two identities that a new item links are not merged that way: --full clusters
everything again. Either way an identity that holds most of a previous identity's members carries its id (grown or
not); any other is named by its members.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime.cli import JobConfig
from jobs.runtime.cluster import ensure_ray
from jobs.runtime.launch import JobContext, run_job, run_module
from jobs.runtime.output import JobOutput, RowWriter
from jobs.runtime.reuse import reusable_run
from ops.io.errors import JobFailed
from ops.io.root import locate
from ops.io.schemas import IDENTITIES
from ops.io.storage import Store, resolve
from ops.io.tables import committed_runs, read_table
from ops.matching import metrics
from ops.matching.clustering import Graph, cluster, join_groups, keep_apart, undirected
from ops.matching.embeddings import identity_of, manifest_of
from ops.matching.items import clearest_faces, face_key, segment_key
from ops.matching.reviews import Pair, Verdicts, newest_review, verdicts

JOB = "identities"
METHODS = ("whispers", "components")


@dataclass
class IdentitiesConfig(JobConfig):
    results: str = field(
        default="out/results", metadata={"positional": True, "run_key": True, "help": "root with the search run"}
    )
    search_run_id: str | None = field(
        default=None, metadata={"run_key": True, "help": "the search run to cluster (jobs.match search)"}
    )
    method: str = field(default="whispers", metadata={"run_key": True, "help": "whispers or components"})
    threshold: float | None = field(
        default=None, metadata={"run_key": True, "help": "cosine score linking two items (default: the search's)"}
    )
    min_llr: float = field(
        default=0.0,
        metadata={
            "run_key": True,
            "help": "where the search carries calibrated log-LRs, link two items only above this one too (0: the "
            "evidence favours 'same')",
        },
    )
    iterations: int = field(default=20, metadata={"run_key": True, "help": "whispers: passes at most"})
    seed: int = field(default=0, metadata={"run_key": True, "help": "whispers: the visiting order's seed"})
    manifest_run_id: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "labels to score against (default: the search's embeddings' manifest)"},
    )
    full: bool = field(
        default=False,
        metadata={"run_key": True, "help": "cluster every item again, not only the items new since the last run"},
    )
    reviews: bool = field(
        default=True,
        metadata={
            "run_key": True,
            "help": "apply the analysts' reviews kept under RESULTS (jobs.review): confirmed pairs in one identity, "
            "rejected pairs never",
        },
    )
    reviews_through: str | None = field(
        default=None,
        metadata={"run_key": True, "help": "apply the reviews up to this review run (default: every committed one)"},
    )
    separate_labels: bool = field(
        default=False,
        metadata={
            "run_key": True,
            "help": "raise the threshold above every link between two differently labelled items (what the pipeline "
            "does): the labelled sample then shows no merge of two labels by a direct link",
        },
    )


@dataclass(frozen=True)
class Clustering:
    """How the clustering task links and clusters the search's items: the method, its passes and seed, whether it
    clusters every item again (``full``), whether the search's items are whole sources, the log-LR a link needs
    too, whether links between differently labelled items are dropped, and the analysts' reviews applied (up to
    this review run; None: none). Frozen and small: it travels to the task."""

    method: str
    iterations: int
    seed: int
    full: bool
    per_source: bool
    min_llr: float
    separate_labels: bool
    reviews_through: str | None

    @classmethod
    def of(cls, config: IdentitiesConfig, per_source: bool, reviews_through: str | None) -> Clustering:
        """The job's options, with the search's ``per_source`` and the review run settled on the driver."""
        return cls(
            method=config.method,
            iterations=config.iterations,
            seed=config.seed,
            full=config.full,
            per_source=per_source,
            min_llr=config.min_llr,
            separate_labels=config.separate_labels,
            reviews_through=reviews_through,
        )


def _search(root: Store, run_id: str | None) -> dict:
    """The committed search run to cluster: one set searched against itself."""
    if not run_id:
        raise JobFailed("--search-run-id is needed: the run of `python -m jobs.match search` to cluster")
    found = [m for m in committed_runs(root) if m["run_id"] == run_id]
    if not found:
        raise JobFailed(f"no committed run {run_id} under {root.uri}: run `python -m jobs.match search` first")
    marker = found[0]
    summary, config = marker.get("summary") or {}, marker.get("config") or {}
    if marker["job"] != "match" or summary.get("mode") != "search":
        raise JobFailed(f"run {run_id} is a {marker['job']} {summary.get('mode', '')} run, not a search")
    if "search_key" not in summary:
        raise JobFailed(f"run {run_id} was made before searches recorded their items (match_items/): search again")
    if not summary["search_key"].get("same_set"):
        raise JobFailed(f"run {run_id} searched queries against another gallery: cluster a search of one set")
    # Labels come from the embeddings' own manifest: the one the search named, or the one its embeddings run made.
    embeddings = locate(root, config.get("queries"))
    manifest = config.get("manifest_run_id") or manifest_of(embeddings, config.get("queries_run_id"))
    return {
        "table": config.get("table", "faces"),
        "labels": (embeddings, manifest),
        "k": summary["k"],
        "embeddings": (embeddings, config.get("queries_run_id")),
        "per_source": bool(summary["search_key"].get("per_source")),
    }


def run(config: IdentitiesConfig, ctx: JobContext) -> dict:
    if config.method not in METHODS:
        raise JobFailed(f"unknown --method {config.method!r}: use {' or '.join(METHODS)}")
    out = JobOutput(ctx, config, {"identities": IDENTITIES})
    root = resolve(config.results)
    search = _search(root, config.search_run_id)
    first = read_table(root, "matches", config.search_run_id, ["threshold", "model_name", "model_sha256"], limit=1)
    if first.num_rows == 0:
        raise JobFailed(f"search run {config.search_run_id} has no rows: nothing links any item")
    threshold = config.threshold if config.threshold is not None else first.column("threshold")[0].as_py()
    if threshold is None:
        raise JobFailed(
            f"no threshold: search run {config.search_run_id} had none (no calibration, no model card threshold); "
            "pass --threshold, or search with --calibration"
        )
    model = (first.column("model_name")[0].as_py(), first.column("model_sha256")[0].as_py())
    labels_root, manifest_run = search["labels"]
    if config.manifest_run_id:
        labels_root, manifest_run = root, config.manifest_run_id
    key = {
        "table": search["table"],
        "per_source": search["per_source"],
        "method": config.method,
        "threshold": round(float(threshold), 6),
        "min_llr": config.min_llr,
        "separate_labels": config.separate_labels,
        "model": list(model),
    }
    previous = reusable_run(ctx.output, JOB, key, "identities_key", ctx.run_id)
    ensure_ray()
    import ray

    writer = out.row_writer("identities")
    reviews_through = (config.reviews_through or newest_review(root)) if config.reviews else None
    clustering = Clustering.of(config, search["per_source"], reviews_through)
    task = ray.remote(num_cpus=1)(cluster_search)
    done = ray.get(
        task.remote(
            root,
            config.search_run_id,
            search["table"],
            float(threshold),
            clustering,
            (labels_root, manifest_run),
            model,
            writer,
            search["embeddings"],
            (ctx.output, previous) if previous else None,
        )
    )
    out.add_files("identities", done.pop("files"))
    if "threshold_raised_to" in done:
        ctx.log.info(
            "threshold raised from %.4f to %.4f: just above the strongest link between two differently labelled items",
            threshold,
            done["threshold_raised_to"],
        )
        threshold = done["threshold_raised_to"]
    summary = {"search_run_id": config.search_run_id, "table": search["table"], "threshold": round(threshold, 6)}
    summary |= {"method": config.method, "identities_key": key, "previous_run_id": previous}
    summary |= {"manifest_run_id": manifest_run, "reviews_through": clustering.reviews_through, **done}
    _log_done(ctx, done, config.method, threshold)
    return out.commit(summary)


def _log_done(ctx: JobContext, done: dict, method: str, threshold: float) -> None:
    scored = (
        f", BCubed F {done['bcubed_f']:.3f} over the {done['labelled_items']} labelled items of {done['items']}"
        if "bcubed_f" in done
        else ""
    )
    ctx.log.info(
        "%d items in %d identities (%d of one, largest %d) by %s at %.3f%s",
        done["items"],
        done["identities"],
        done["singletons"],
        done["largest"],
        method,
        threshold,
        scored,
    )
    for warning in done["warnings"]:
        ctx.log.warning("%s", warning)


def cluster_search(
    root: Store,
    search_run: str,
    table: str,
    threshold: float,
    settings: Clustering,
    labels: tuple[Store, str | None],
    model: tuple[str, str],
    writer: RowWriter,
    embeddings: tuple[Store, str | None] | None = None,
    previous: tuple[Store, str] | None = None,
) -> dict:
    """One worker: the search's items and lists as a graph, clustered (the faces of a video track as one), written
    as ``identities/`` rows; counts and, with labels, the scores. ``embeddings`` (the root and run the search read)
    gives the tracks and how clear each member is.

    With a ``previous`` identities run, its identities carry their ids, and with whispers (unless ``full``) its
    items keep their identities: only the new items (new keys, or new content) are clustered, joining an
    identity or founding one."""
    items = read_table(root, "match_items", search_run, ["item", "uri", "sha256"])
    # A link is a match: above the threshold and, where the search carries calibrated log-LRs, on evidence that
    # favours "same" (``ops.matching.decisions``).
    supported = pc.field("llr").is_null() | (pc.field("llr") > settings.min_llr)
    listed = read_table(root, "matches", search_run, ["score"]).num_rows
    lists = read_table(
        root,
        "matches",
        search_run,
        ["query_item", "gallery_item", "score", "llr"],
        filter=(pc.field("score") >= threshold) & supported,
    )
    names = items.column("item").combine_chunks()
    raised, kept_before = None, len(lists)
    # Face rows of one video track are one face: clustered together (a search of whole sources has no tracks).
    tracked = embeddings is not None and table == "faces" and not settings.per_source
    group = track_groups(embeddings[0], embeddings[1], items) if tracked else None
    known = None
    if labels[1]:  # of faces, a label names only the one face (or track) of its source, not a group photo's
        known = _item_labels(labels[0], labels[1], items)
        known = known if settings.per_source else _alone(known, items, group)
    if settings.separate_labels and known is not None:
        lists, raised = _separate_labels(lists, known, items, names)
    src = pc.index_in(lists.column("query_item"), value_set=names)
    dst = pc.index_in(lists.column("gallery_item"), value_set=names)
    if src.null_count or dst.null_count:  # the run's own tables disagree: nothing to cluster on a guess
        raise JobFailed(f"search run {search_run} lists items its match_items/ does not hold: search again")
    score = lists.column("score").to_numpy().astype(np.float64)
    graph = undirected(len(names), _ints(src), _ints(dst), score)
    tracks = group
    found = verdicts(root, settings.reviews_through) if settings.reviews_through else Verdicts()
    graph, group, same, different = _constrained(graph, group, found, items)
    clear = clarity(embeddings[0], embeddings[1], table, settings.per_source, items) if embeddings else None
    before = previous_identities(previous[0], previous[1], items) if previous else np.full(len(names), None, object)
    kept = before != None  # noqa: E711 (element-wise)
    going_on = settings.method == "whispers" and not settings.full
    start, movable = _going_on(before, kept) if going_on else (None, None)
    clusters = cluster(graph, settings.method, group, settings.iterations, settings.seed, start, movable)
    clusters, split = keep_apart(graph, clusters, *different, group)
    rows, counts = _members(items, graph, clusters, before, clear, _evidence_map(lists))
    counts |= {"items_kept": int(kept.sum()), "items_new": int((~kept).sum()), "reclustered": movable is None}
    if raised is not None:
        threshold = raised
        counts["threshold_raised_to"] = raised  # the rows carry the threshold their links were kept at
        counts["links_dropped_to_separate_labels"] = kept_before - len(lists)
    stamp = {"run_id": writer.run_id, "modality": table, "method": settings.method, "threshold": threshold}
    stamp |= {"search_run_id": search_run, "model_name": model[0], "model_sha256": model[1]}
    for name, value in stamp.items():
        rows = rows.append_column(name, pa.array([value] * rows.num_rows))
    files = writer.write(rows.select(IDENTITIES.names).cast(IDENTITIES))
    counts |= {"items": len(names), "edges": len(graph), "files": files}
    if tracks is not None:
        counts["tracks"] = int(len(np.unique(tracks)) - (np.bincount(tracks) == 1).sum())
    if found:
        conflicting = int((group[different[0]] == group[different[1]]).sum()) if group is not None else 0
        counts |= {"reviewed_same": len(same[0]), "reviewed_different": len(different[0])}
        counts |= {"split_by_reviews": split, "reviews_conflicting": conflicting}
    if labels[1]:
        counts |= _scores(known, np.array(rows.column("identity").to_pylist(), object))
    counts["warnings"] = _warnings(counts, len(lists), listed, kept_before)
    return counts


def _going_on(before: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Whispers going on from a previous clustering: each previous identity starts as its lowest kept member's
    label, and only the new items move (None, None: nothing kept, cluster everything)."""
    if not kept.any():
        return None, None
    start = np.arange(len(before))
    firsts: dict = {}
    for i in np.flatnonzero(kept):
        start[i] = firsts.setdefault(before[i], i)
    return start, ~kept


def _constrained(graph: Graph, group: np.ndarray | None, found: Verdicts, items: pa.Table):
    """The analysts' verdicts on these items: a rejected pair's own link dropped from the graph (``keep_apart`` keeps
    its sides apart after), a confirmed pair must-linked as a track's faces are. The graph, the must-link groups,
    and the confirmed and rejected pairs as item positions."""
    same, different = _reviewed(found.same, items), _reviewed(found.different, items)
    graph = _without(graph, different)
    if len(same[0]):
        group = join_groups(np.arange(len(items)) if group is None else group, *same)
    return graph, group, same, different


def _reviewed(pairs: list[Pair], items: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The reviewed pairs both of whose sides are items here with the content reviewed, as item positions."""
    sides = [side for pair in pairs for side in pair]
    if not sides:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    at = pc.index_in(pa.array([s[0] for s in sides], pa.string()), value_set=items.column("item").combine_chunks())
    at = np.asarray(at.to_numpy(zero_copy_only=False), np.float64)
    known = ~np.isnan(at)
    at = np.where(known, at, 0).astype(np.int64)
    shas = np.array(items.column("sha256").to_pylist(), object)
    known &= shas[at] == np.array([s[1] for s in sides], object)
    both = known.reshape(-1, 2).all(axis=1)
    at = at.reshape(-1, 2)[both]
    return at[:, 0], at[:, 1]


def _without(graph: Graph, pairs: tuple[np.ndarray, np.ndarray]) -> Graph:
    """The graph without the edges between the two sides of these pairs."""
    if not len(pairs[0]):
        return graph
    n = max(graph.n, 1)
    gone = np.minimum(*pairs) * n + np.maximum(*pairs)
    keep = ~np.isin(graph.src * n + graph.dst, gone)
    return Graph(graph.n, graph.src[keep], graph.dst[keep], graph.weight[keep])


def _item_labels(root: Store, manifest_run: str, items: pa.Table) -> np.ndarray:
    """Each item's label from the manifest (None when unlabelled)."""
    labelled = pc.is_valid(pc.field("label")) & (pc.field("label") != "")
    known = read_table(root, "manifest", manifest_run, ["uri", "label"], filter=labelled)
    at = pc.index_in(items.column("uri"), value_set=known.column("uri").combine_chunks()).to_numpy(zero_copy_only=False)
    values = np.array(known.column("label").to_pylist() + [None], object)
    return values[np.where(np.isnan(at), len(values) - 1, at).astype(np.int64)]


def _alone(item_labels: np.ndarray, items: pa.Table, group: np.ndarray | None = None) -> np.ndarray:
    """Labels of the items that are their source's only face (its only track, for a video: ``group`` says which
    items are one track): a label names the one person of a source, not each face of a group photo or each track of
    a video filed under it."""
    uris = np.array(items.column("uri").to_pylist(), object)
    if not len(uris):
        return item_labels
    faces = group if group is not None else np.arange(len(uris))
    source = np.unique(uris, return_inverse=True)[1]
    pairs = np.unique(np.stack([source, faces]), axis=1)  # each (source, face) once
    per_source = np.bincount(pairs[0], minlength=source.max() + 1)
    return np.where(per_source[source] == 1, item_labels, None)


def _separate_labels(
    lists: pa.Table, item_labels: np.ndarray, items: pa.Table, names: pa.Array
) -> tuple[pa.Table, float | None]:
    """The lists above every link between two differently labelled items of different content (a duplicate filed
    under two labels says nothing about two people), and the threshold that keeps them (just above the strongest such
    link, as stored); None when no link joins two labels."""
    a = pc.index_in(lists.column("query_item"), value_set=names).to_numpy(zero_copy_only=False)
    b = pc.index_in(lists.column("gallery_item"), value_set=names).to_numpy(zero_copy_only=False)
    known = ~(np.isnan(a) | np.isnan(b))
    ia, ib = a[known].astype(np.int64), b[known].astype(np.int64)
    shas = np.array(items.column("sha256").to_pylist(), object)
    la = np.full(len(a), None, object)
    lb = np.full(len(b), None, object)
    la[known], lb[known] = item_labels[ia], item_labels[ib]
    other = np.zeros(len(a), bool)
    other[known] = shas[ia] != shas[ib]
    crossing = (la != None) & (lb != None) & (la != lb) & other  # noqa: E711 (element-wise)
    if not crossing.any():
        return lists, None
    score = lists.column("score").to_numpy().astype(np.float32)
    strongest = score[crossing].max()
    return lists.filter(pa.array(score > strongest)), float(np.nextafter(strongest, np.float32(np.inf)))


def _evidence_map(lists: pa.Table):
    """The search rows' score -> log-LR map (the calibration's: linear, so the strongest link by score is the
    strongest by evidence), as a function of scores; None when the search carries no log-LRs."""
    llr = lists.column("llr").to_numpy(zero_copy_only=False).astype(np.float64)
    known = ~np.isnan(llr)
    if not known.any():
        return None
    score = lists.column("score").to_numpy().astype(np.float64)[known]
    order = np.argsort(score)
    return lambda s: np.interp(s, score[order], llr[known][order])


# An identity that holds more than this share of the items, or a threshold that keeps more than this share of the
# search's links, says the threshold links nearly everything.
MOST = 0.5
NEARLY_ALL_LINKS = 0.9
SHOWN = 10  # identities named in the warnings at most


def _warnings(counts: dict, kept: int, listed: int, kept_before: int | None = None) -> list[str]:
    """What a reader must know before trusting the identities: merges of labelled people, one identity holding most
    items, a threshold that keeps nearly every link, analysts' verdicts that contradict each other, labels kept apart
    at the cost of most links (``kept_before``: the links before that)."""
    out = []
    for identity, names in counts.pop("mixed", {}).items():
        out.append(f"identity {identity} holds {len(names)} labels ({', '.join(names[:5])}): it merges people")
    if counts.get("mixed_identities", 0) > SHOWN:
        out.append(f"... and {counts['mixed_identities'] - SHOWN} more identities that hold several labels")
    items, largest = counts["items"], counts["largest"]
    if items >= 10 and largest > MOST * items:
        out.append(
            f"one identity holds {largest} of {items} items: check that it is one person (a threshold that links "
            "people who differ does this: raise it, or calibrate with labels)"
        )
    if listed >= 10 and kept > NEARLY_ALL_LINKS * listed:
        out.append(
            f"the threshold keeps {kept} of the search's {listed} links ({kept / listed:.0%}): it links nearly "
            "everything, and the identities say little"
        )
    if counts.get("reviews_conflicting"):
        out.append(
            f"{counts['reviews_conflicting']} rejected pair(s) are joined by confirmed pairs (or one video track): "
            "the reviews contradict each other, and those pairs stay in one identity; review them again"
        )
    dropped, raised = counts.get("links_dropped_to_separate_labels", 0), counts.get("threshold_raised_to")
    if raised is not None and kept_before and dropped > kept_before / 2:
        out.append(
            f"keeping the labels apart raised the threshold to {raised:.4f} and dropped {dropped} of {kept_before} "
            "links: a photo filed under the wrong label, or a link between two people who look alike, may be the cause"
        )
    return out


def track_groups(root: Store, run_id: str | None, items: pa.Table) -> np.ndarray:
    """Each item's must-link group: the items of one face track of one video share one; every other item is a
    group of its own. Tracks come from the faces run's rows of the same content (uri, frame, face and sha256)."""
    rows = read_table(
        root,
        "faces",
        run_id,
        ["uri", "sha256", "frame_index", "face_index", "track_id"],
        filter=pc.is_valid(pc.field("track_id")),
    )
    track_of = {
        (face_key(u, f, i), s): f"{u}\0{s}\0{t}"
        for u, s, f, i, t in zip(*(rows.column(c).to_pylist() for c in rows.column_names), strict=True)
    }
    names, shas = items.column("item").to_pylist(), items.column("sha256").to_pylist()
    keys = [track_of.get((n, s), f"\1{n}") for n, s in zip(names, shas, strict=True)]
    return np.unique(np.array(keys, object), return_inverse=True)[1].astype(np.int64)


def previous_identities(root: Store, run_id: str, items: pa.Table) -> np.ndarray:
    """Each item's identity in a previous run, where it was a member with the same content (else None)."""
    was = identity_of(root, run_id)
    names, shas = items.column("item").to_pylist(), items.column("sha256").to_pylist()
    return np.array([was.get((n, s)) for n, s in zip(names, shas, strict=True)], object)


def carried_ids(cluster: np.ndarray, names: list[str], before: np.ndarray) -> tuple[np.ndarray, int]:
    """An id per cluster (``cluster``: dense indices): a previous identity's id goes to the cluster that holds more
    than half of its kept members, each cluster taking at most one (the most members first; ties to the lower id);
    any other cluster is ``id-`` and a hash of its sorted members (never an id used before). Returns the ids and
    how many were carried."""
    sizes = np.bincount(cluster)
    kept = before != None  # noqa: E711 (element-wise)
    counts: dict[tuple[int, str], int] = {}
    for c, was in zip(cluster[kept].tolist(), before[kept].tolist(), strict=True):
        counts[(c, was)] = counts.get((c, was), 0) + 1
    members_kept: dict[str, int] = {}
    for (_, was), n in counts.items():
        members_kept[was] = members_kept.get(was, 0) + n
    ids = np.empty(len(sizes), object)
    taken: set[str] = set()
    for (c, was), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0])):
        # Only to the cluster holding more than half of the identity's kept members: never to a stray.
        if ids[c] is None and was not in taken and 2 * n > members_kept[was]:
            ids[c] = was
            taken.add(was)
    carried = len(taken)
    taken |= set(members_kept)  # a new id never repeats an earlier one (a split can bring back a founding set)
    by_cluster = np.argsort(cluster, kind="stable")
    bounds = np.r_[0, np.cumsum(sizes)]
    for c in np.flatnonzero(ids == None):  # noqa: E711
        text = "\n".join(sorted(names[i] for i in by_cluster[bounds[c] : bounds[c + 1]]))
        ids[c] = "id-" + hashlib.sha256(text.encode()).hexdigest()[:16]
        while ids[c] in taken:
            text += "\n"
            ids[c] = "id-" + hashlib.sha256(text.encode()).hexdigest()[:16]
        taken.add(ids[c])
    return ids, carried


def clarity(root: Store, run_id: str | None, table: str, per_source: bool, items: pa.Table) -> np.ndarray:
    """How clear each item is, for choosing a representative: a face's detector score times its eye distance (for
    a whole source, its clearest face's: the one its search used), a voice's seconds of speech; NaN when unknown."""
    if table == "faces":
        columns = ["uri", "sha256", "frame_index", "face_index", "score", "eye_distance", "face_size"]
        rows = read_table(root, "faces", run_id, columns)
        if per_source:
            rows = clearest_faces(rows)
        value = pc.multiply(rows.column("score").cast(pa.float64()), rows.column("eye_distance").cast(pa.float64()))
        uris, frames, faces = (rows.column(c).to_pylist() for c in ("uri", "frame_index", "face_index"))
        keys = uris if per_source else [face_key(u, f, i) for u, f, i in zip(uris, frames, faces, strict=True)]
    else:
        level = "source" if per_source else "segment"
        rows = read_table(
            root,
            "voices",
            run_id,
            ["uri", "sha256", "segment_index", "speech_seconds"],
            filter=pc.field("level") == level,
        )
        value = rows.column("speech_seconds")
        uris, segments = rows.column("uri").to_pylist(), rows.column("segment_index").to_pylist()
        keys = uris if per_source else [segment_key(u, s) for u, s in zip(uris, segments, strict=True)]
    known = dict(zip(zip(keys, rows.column("sha256").to_pylist(), strict=True), value.to_pylist(), strict=True))
    names, shas = items.column("item").to_pylist(), items.column("sha256").to_pylist()
    return np.array([known.get((n, s)) for n, s in zip(names, shas, strict=True)], np.float64)


def _ints(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(np.int64)


def _members(
    items: pa.Table,
    graph: Graph,
    labels: np.ndarray,
    before: np.ndarray,
    clear: np.ndarray | None = None,
    evidence=None,
) -> tuple[pa.Table, dict]:
    """Each member's identity, size, confidence and whether it represents it; each identity's cohesion.

    A member's confidence is the share of its edge weight inside its identity; with ``evidence`` (the search's map of
    scores to log-LRs), times how sure its strongest link inside is (the posterior of "same" at even prior odds):
    a member held by weak links is not shown as certain."""
    n = len(labels)
    inside = labels[graph.src] == labels[graph.dst]
    weight_in = np.bincount(graph.src[inside], graph.weight[inside], n) + np.bincount(
        graph.dst[inside], graph.weight[inside], n
    )
    weight_all = np.bincount(graph.src, graph.weight, n) + np.bincount(graph.dst, graph.weight, n)
    share = np.where(weight_all > 0, weight_in / np.where(weight_all > 0, weight_all, 1), 1.0)
    confidence = share.copy()
    if evidence is not None and inside.any():
        best = np.full(n, -np.inf)
        np.maximum.at(best, graph.src[inside], graph.weight[inside])
        np.maximum.at(best, graph.dst[inside], graph.weight[inside])
        linked = np.isfinite(best)
        confidence[linked] *= 1 / (1 + np.exp(-evidence(best[linked])))
    _, cluster = np.unique(labels, return_inverse=True)
    sizes = np.bincount(cluster)
    edge_sum = np.bincount(cluster[graph.src[inside]], graph.weight[inside], len(sizes))
    edge_count = np.bincount(cluster[graph.src[inside]], minlength=len(sizes))
    cohesion = np.where(edge_count > 0, edge_sum / np.maximum(edge_count, 1), np.nan)
    # The representative: among the members mostly linked inside, the clearest (a face's detector score times its
    # eye distance, a voice's seconds of speech), then the most linked, then the surest; one sort of all members.
    clear = np.zeros(n) if clear is None else np.nan_to_num(clear, nan=-1.0)
    order = np.lexsort((np.arange(n), -confidence, -weight_in, -clear, share < 0.5, cluster))
    first = np.r_[True, cluster[order][1:] != cluster[order][:-1]]
    representative = np.zeros(n, bool)
    representative[order[first]] = True
    ids, carried = carried_ids(cluster, items.column("item").to_pylist(), before)
    rows = pa.table(
        {
            "identity": pa.array(ids[cluster].tolist(), pa.string()),
            "item": items.column("item"),
            "uri": items.column("uri"),
            "sha256": items.column("sha256"),
            "size": pa.array(sizes[cluster], pa.int32()),
            "representative": pa.array(representative),
            "cohesion": pa.array(
                np.where(sizes[cluster] > 1, cohesion[cluster], np.nan), pa.float64(), from_pandas=True
            ),
            "confidence": pa.array(confidence, pa.float64()),
        }
    )
    counts = {"identities": len(sizes), "singletons": int((sizes == 1).sum()), "largest": int(sizes.max(initial=0))}
    counts["identities_carried"] = carried
    return rows, counts


def _scores(item_labels: np.ndarray, labels: np.ndarray) -> dict:
    """The clustering (each item's identity, ``labels``) against the items' labels, over the labelled items."""
    mine = item_labels != None  # noqa: E711 (element-wise)
    if not mine.any():
        return {}
    truth, found = item_labels[mine], labels[mine]
    mixed: dict[str, set[str]] = {}
    for cluster_label, person in zip(found.tolist(), truth.tolist(), strict=True):
        mixed.setdefault(cluster_label, set()).add(person)
    merged = {c: sorted(p) for c, p in sorted(mixed.items()) if len(p) > 1}
    bp, br, bf = metrics.bcubed(truth, found)
    pp, pr, pf = metrics.pairwise_f(truth, found)
    return {
        "labelled_items": int(mine.sum()),
        "true_identities": len(set(truth.tolist())),
        "found_identities": len(np.unique(found)),
        "bcubed_precision": bp,
        "bcubed_recall": br,
        "bcubed_f": bf,
        "pairwise_precision": pp,
        "pairwise_recall": pr,
        "pairwise_f": pf,
        # Identities that hold two labels or more: the first few named (the count says how many in all).
        "mixed_identities": len(merged),
        "mixed": dict(list(merged.items())[:SHOWN]),
    }


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, IdentitiesConfig, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
