"""jobs.identities: a search of one set clustered into identities, scored against the manifest's labels."""

import numpy as np

from jobs import calibrate, identities, match, review
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from tests.jobs.test_match import write_faces


def _summary(root, run_id: str) -> dict:
    (marker,) = [m for m in committed_runs(resolve(str(root))) if m["run_id"] == run_id]
    return marker["summary"]


def test_a_search_clustered_into_identities_scored_against_labels(ray_cluster, tmp_path, caplog):
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((8, 16))
    vectors = np.concatenate(
        [np.repeat(centres, 10, axis=0) + 0.3 * rng.standard_normal((80, 16)), rng.standard_normal((1, 16))]
    )
    labels = [f"p{i // 10}" for i in range(80)] + [None]  # and a stranger, unlabelled
    uris = [f"/archive/{i:02d}.jpg" for i in range(81)]
    write_faces(tmp_path, vectors.astype(np.float32), uris, labels=labels)
    search = ["search", "--queries", tmp_path, "--output", tmp_path, "--per-source", "--k", 10, "--threshold", 0.7]
    assert match.main([*map(str, search), "--run-id", "s", "--log-level", "WARNING"]) == 0
    argv = [str(tmp_path), "--search-run-id", "s", "--output", str(tmp_path), "--manifest-run-id", "manifest-test"]
    assert identities.main([*argv, "--run-id", "i1"]) == 0
    summary = _summary(tmp_path, "i1")
    assert summary["identities"] == 9 and summary["singletons"] == 1 and summary["largest"] == 10
    assert summary["bcubed_f"] == 1.0 and summary["pairwise_f"] == 1.0 and summary["true_identities"] == 8
    rows = read_table(resolve(str(tmp_path)), "identities", "i1").to_pylist()
    assert (
        len(rows) == 81
        and {r["method"] for r in rows} == {"whispers"}
        and {r["threshold"] for r in rows} == {float(np.float32(0.7))}
    )
    by_identity: dict[str, list[dict]] = {}
    for r in rows:
        by_identity.setdefault(r["identity"], []).append(r)
    for members in by_identity.values():
        assert len({m["uri"].split("/")[-1][:1] for m in members}) == 1  # one person (one tens digit) each
        assert sum(m["representative"] for m in members) == 1 and all(m["size"] == len(members) for m in members)
        assert all(0 < m["confidence"] <= 1 for m in members)
        assert (members[0]["cohesion"] is None) == (len(members) == 1)
    # The same clustering again: the same identity ids (they name their members); components agree here.
    assert identities.main([*argv, "--run-id", "i2"]) == 0
    assert identities.main([*argv, "--run-id", "i3", "--method", "components"]) == 0
    ids = lambda run: sorted(r["identity"] for r in read_table(resolve(str(tmp_path)), "identities", run).to_pylist())  # noqa: E731
    assert ids("i1") == ids("i2") == ids("i3")
    # A run that is not a search of one set, or no threshold anywhere: refused with the reason.
    assert identities.main([str(tmp_path), "--search-run-id", "i1", "--output", str(tmp_path)]) == 2
    assert "not a search" in caplog.text
    other = tmp_path / "other"  # embeddings of a model that publishes no threshold, searched without one
    write_faces(other, vectors.astype(np.float32), uris, model=("an-imported-encoder", "cd" * 32))
    bare = ["search", "--queries", other, "--output", other, "--per-source", "--k", 10]
    assert match.main([*map(str, bare), "--run-id", "bare", "--log-level", "WARNING"]) == 0
    assert identities.main([str(other), "--search-run-id", "bare", "--output", str(other)]) == 2
    assert "pass --threshold" in caplog.text


def test_identities_say_when_they_are_unsure(ray_cluster, tmp_path, caplog):
    """A threshold that links everything merges people: the run says so (one identity holding most items, a
    threshold keeping every link, identities holding several labels) and its score says what it covers; with a
    calibrated search, a member held by weak evidence has a confidence below 1."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((4, 16))
    vectors = (np.repeat(centres, 6, axis=0) + 0.6 * rng.standard_normal((24, 16))).astype(np.float32)
    labels = [f"p{i // 6}" for i in range(20)] + [None] * 4  # four items unlabelled
    uris = [f"/archive/{i:02d}.jpg" for i in range(24)]
    write_faces(tmp_path, vectors, uris, labels=labels, model=("an-imported-encoder", "cd" * 32))
    loose = ["search", "--queries", tmp_path, "--output", tmp_path, "--per-source", "--k", 5, "--threshold", -1]
    assert match.main([*map(str, loose), "--run-id", "loose", "--log-level", "WARNING"]) == 0
    argv = [str(tmp_path), "--output", str(tmp_path), "--manifest-run-id", "manifest-test"]
    assert identities.main([*argv, "--search-run-id", "loose", "--run-id", "everything", "--method", "components"]) == 0
    summary = _summary(tmp_path, "everything")
    warnings = " | ".join(summary["warnings"])
    assert " labels (p" in warnings and "it merges people" in warnings
    assert "one identity holds" in warnings and "of 24 items" in warnings and "links nearly everything" in warnings
    assert all(w in caplog.text for w in summary["warnings"])
    assert summary["labelled_items"] == 20 and summary["items"] == 24
    assert "over the 20 labelled items of 24" in caplog.text
    # What the pipeline does with labels: the threshold raised above every link between two labels.
    assert identities.main([*argv, "--search-run-id", "loose", "--run-id", "apart", "--separate-labels"]) == 0
    apart = _summary(tmp_path, "apart")
    assert apart["threshold"] > -1 and "threshold raised from -1.0000" in caplog.text
    rows = read_table(resolve(str(tmp_path)), "identities", "apart").to_pylist()
    assert all(abs(r["threshold"] - apart["threshold"]) < 1e-6 for r in rows)
    labelled = {f"/archive/{i:02d}.jpg": f"p{i // 6}" for i in range(20)}
    for identity in {r["identity"] for r in rows}:
        assert len({labelled[r["uri"]] for r in rows if r["identity"] == identity and r["uri"] in labelled}) <= 1 or (
            any("merges people" in w for w in apart["warnings"])
        )
    # Calibrated: links only on evidence for "same", and confidence that says how strong it is.
    assert calibrate.main([str(tmp_path), "--output", str(tmp_path), "--run-id", "cal", "--log-level", "ERROR"]) == 0
    record = str(tmp_path / "calibration" / "cal" / "record.json")
    sure = ["search", "--queries", tmp_path, "--output", tmp_path, "--per-source", "--k", 5, "--calibration", record]
    assert match.main([*map(str, sure), "--run-id", "sure", "--log-level", "WARNING"]) == 0
    assert identities.main([*argv, "--search-run-id", "sure", "--run-id", "weighed"]) == 0
    rows = read_table(resolve(str(tmp_path)), "identities", "weighed").to_pylist()
    confidence = [r["confidence"] for r in rows if r["size"] > 1]
    assert confidence and all(0 < c <= 1 for c in confidence) and min(confidence) < 0.99
    assert all(r["confidence"] == 1.0 for r in rows if r["size"] == 1)


def test_the_faces_of_a_video_track_are_one_identity(ray_cluster, tmp_path):
    """A track turns its head: its profile frames look like nobody, yet they are the face the track began with."""
    rng = np.random.default_rng(7)
    a, b, profile = rng.standard_normal((3, 16))
    near = lambda centre, n: centre + 0.2 * rng.standard_normal((n, 16))  # noqa: E731
    vectors = np.concatenate([near(a, 4), near(b, 4), near(a, 3), near(profile, 3), near(b, 3)]).astype(np.float32)
    uris = [f"/archive/a{i}.jpg" for i in range(4)] + [f"/archive/b{i}.jpg" for i in range(4)] + ["/archive/v.mp4"] * 9
    video = [(f, 0, 0) for f in range(6)] + [(f, 1, 1) for f in range(3)]  # (frame, face, track)
    frames = [{}] * 8 + [
        {"frame_index": f, "timestamp": f / 1.0, "face_index": i, "track_id": t, "sha256": "f" * 64}
        | ({"eye_distance": 40.0} if (f, i) == (2, 0) else {})  # the clearest face of all
        for f, i, t in video
    ]
    write_faces(tmp_path, vectors, uris, frames=frames)
    search = ["search", "--queries", tmp_path, "--output", tmp_path, "--k", 10, "--threshold", 0.7]
    assert match.main([*map(str, search), "--run-id", "s", "--log-level", "WARNING"]) == 0
    assert identities.main([str(tmp_path), "--search-run-id", "s", "--output", str(tmp_path), "--run-id", "i"]) == 0
    rows = read_table(resolve(str(tmp_path)), "identities", "i").to_pylist()
    who = {r["item"]: r["identity"] for r in rows}
    assert len(rows) == 17 and len(set(who.values())) == 2
    assert {who[f"/archive/v.mp4#frame={f}&face=0"] for f in range(6)} == {who["/archive/a0.jpg#frame=0&face=0"]}
    assert {who[f"/archive/v.mp4#frame={f}&face=1"] for f in range(3)} == {who["/archive/b0.jpg#frame=0&face=0"]}
    assert _summary(tmp_path, "i")["tracks"] == 2
    chosen = {r["identity"]: r["item"] for r in rows if r["representative"]}
    assert chosen[who["/archive/a0.jpg#frame=0&face=0"]] == "/archive/v.mp4#frame=2&face=0"


def test_the_next_night_joins_new_faces_to_the_identities_it_has(ray_cluster, tmp_path):
    """New photos of a known person join that identity under its id; a new person founds one; nobody else moves;
    --full clusters everything again and still finds the same ids."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((5, 16))
    near = lambda p, n: centres[p] + 0.3 * rng.standard_normal((n, 16))  # noqa: E731
    first = np.concatenate([near(p, 6) for p in range(4)]).astype(np.float32)
    uris = [f"/archive/{i:02d}.jpg" for i in range(24)]
    added = np.concatenate([near(0, 3), near(4, 4)]).astype(np.float32)  # person 0 again; person 4, new
    new_uris = [f"/archive/new{i}.jpg" for i in range(7)]

    def night(run: str, vectors, names, *extra):
        write_faces(tmp_path, vectors, names, run_id=f"faces-{run}")
        runs = ["--queries-run-id", f"faces-{run}", "--gallery-run-id", f"faces-{run}"]
        search = ["search", "--queries", tmp_path, "--output", tmp_path, "--k", 8, "--threshold", 0.7, *runs]
        assert match.main([*map(str, search), "--per-source", "--run-id", f"s{run}", "--log-level", "WARNING"]) == 0
        argv = [str(tmp_path), "--search-run-id", f"s{run}", "--output", str(tmp_path), "--run-id", f"i{run}"]
        assert identities.main([*argv, *extra]) == 0
        rows = read_table(resolve(str(tmp_path)), "identities", f"i{run}").to_pylist()
        return {r["uri"]: r["identity"] for r in rows}, _summary(tmp_path, f"i{run}")

    one, _ = night("1", first, uris)
    assert len(set(one.values())) == 4
    two, summary = night("2", np.concatenate([first, added]), uris + new_uris)
    assert summary["previous_run_id"] == "i1" and summary["reclustered"] is False
    assert summary["items_kept"] == 24 and summary["items_new"] == 7 and summary["identities_carried"] == 4
    assert all(two[u] == one[u] for u in uris)  # nobody moved, every id carried (person 0's grew)
    assert {two[u] for u in new_uris[:3]} == {one[uris[0]]}
    assert len({two[u] for u in new_uris[3:]}) == 1 and two[new_uris[3]] not in one.values()
    again, summary = night("3", np.concatenate([first, added]), uris + new_uris, "--full")
    assert summary["reclustered"] is True and summary["items_kept"] == 31 and again == two
    # A night with nothing new: nothing moves, nothing is renamed.
    same, summary = night("4", np.concatenate([first, added]), uris + new_uris)
    assert summary["items_new"] == 0 and summary["reclustered"] is False and same == two


def test_an_analysts_verdicts_keep_rejected_pairs_apart_and_confirmed_pairs_together(ray_cluster, tmp_path, caplog):
    rng = np.random.default_rng(7)
    a, b, c1, c2 = 4 * np.eye(16)[:4]  # four directions far apart
    people = [a] * 5 + [b] * 5 + [c1] * 3 + [c2] * 3  # C seen twice, so unlike himself that no link joins the two
    vectors = np.array(people) + 0.25 * rng.standard_normal((16, 16))
    vectors[4] = (a + b) / 2  # one of A's faces half like B: the link that chains A and B
    uris = [f"/archive/{i:02d}.jpg" for i in range(16)]
    write_faces(tmp_path, vectors.astype(np.float32), uris)
    search = ["search", "--queries", tmp_path, "--output", tmp_path, "--per-source", "--k", 15, "--threshold", 0.6]
    assert match.main([*map(str, search), "--run-id", "s", "--log-level", "WARNING"]) == 0
    argv = [str(tmp_path), "--search-run-id", "s", "--output", str(tmp_path), "--method", "components"]
    root = resolve(str(tmp_path))

    def identity(run: str) -> dict[str, str]:
        return {r["uri"]: r["identity"] for r in read_table(root, "identities", run).to_pylist()}

    assert identities.main([*argv, "--run-id", "before"]) == 0
    before = identity("before")
    assert before[uris[0]] == before[uris[9]]  # A and B chained into one identity
    assert before[uris[10]] != before[uris[13]]  # C split in two

    def mark(i: int, j: int, verdict: str) -> None:
        argv = [str(tmp_path), "--match-run", "s", "--query", uris[i], "--gallery", uris[j], "--verdict", verdict]
        assert review.main([*argv, "--reviewer", "A. Examiner", "--note", "seen side by side"]) == 0

    mark(0, 9, "rejected")
    first = [m["run_id"] for m in committed_runs(root) if m["job"] == "review"][0]
    mark(13, 10, "confirmed")
    assert identities.main([*argv, "--run-id", "after"]) == 0
    after = identity("after")
    assert after[uris[0]] != after[uris[9]]  # the rejected pair is never one identity
    assert {after[uris[i]] for i in range(4)} == {after[uris[0]]} and len({after[uris[i]] for i in range(5, 10)}) == 1
    assert {after[uris[i]] for i in range(10, 16)} == {after[uris[10]]}  # the confirmed pair joins C's two
    summary = _summary(tmp_path, "after")
    assert (summary["reviewed_same"], summary["reviewed_different"], summary["split_by_reviews"]) == (1, 1, 1)
    assert summary["reviews_through"] != first
    # Up to the first review only: the rejection applies, the confirmation does not; --no-reviews: neither.
    assert identities.main([*argv, "--run-id", "first", "--reviews-through", first]) == 0
    assert identity("first")[uris[10]] != identity("first")[uris[13]]
    assert identity("first")[uris[0]] != identity("first")[uris[9]]
    assert identities.main([*argv, "--run-id", "none", "--no-reviews"]) == 0
    together = lambda ids: sorted(sorted(u for u in ids if ids[u] == i) for i in set(ids.values()))  # noqa: E731
    assert together(identity("none")) == together(before)  # the same people (ids carry on from run to run)
