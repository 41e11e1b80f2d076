import numpy as np

from ops.faces.tracks import assign_tracks, clearest_per_track


def _face(frame, index, box, direction, score=0.9, eye=20.0):
    return {
        "frame_index": frame,
        "face_index": index,
        "box": box,
        "embedding": direction,
        "score": score,
        "eye_distance": eye,
    }


def test_two_faces_moving_side_by_side_make_two_tracks():
    left, right = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    rows = []
    for f in range(4):
        rows.append(_face(f * 10, 0, [10 + f, 10, 60 + f, 60], left, score=0.8 + 0.01 * f))
        rows.append(_face(f * 10, 1, [200 - f, 10, 250 - f, 60], right))
    ids = assign_tracks(rows)
    assert len(set(ids)) == 2
    assert len({ids[i] for i in range(0, 8, 2)}) == 1 and len({ids[i] for i in range(1, 8, 2)}) == 1
    for row, track in zip(rows, ids, strict=True):
        row["track_id"] = track
    best = clearest_per_track(rows)
    assert len(best) == 2 and best[0]["frame_index"] == 30  # the most confident face of the left track


def test_a_face_that_changes_identity_in_place_starts_a_new_track():
    rows = [_face(0, 0, [10, 10, 60, 60], [1.0, 0.0]), _face(10, 0, [10, 10, 60, 60], [0.0, 1.0])]
    assert len(set(assign_tracks(rows))) == 2
    gap = [_face(0, 0, [10, 10, 60, 60], [1.0, 0.0])] + [_face(f, 0, [300, 300, 350, 350], [0, 1.0]) for f in (1, 2, 3)]
    gap.append(_face(4, 1, [10, 10, 60, 60], [1.0, 0.0]))  # back after more than max_gap samples: a new track
    assert len(set(assign_tracks(gap))) == 3


def test_a_track_unseen_for_more_than_the_gap_ends_and_long_videos_stay_linear():
    face = [1.0, 0.0, 0.0]
    rows = [_face(f, 0, [10, 10, 60, 60], face) for f in (0, 1, 5)]  # samples 0, 1, 2: the gap is one sample
    assert assign_tracks(rows, max_gap=2) == [0, 0, 0]
    rows = [_face(f, 0, [10, 10, 60, 60], face) for f in (0, 1)] + [_face(9, 0, [10, 10, 60, 60], face)]
    rows += [_face(f, 1, [500, 500, 550, 550], [0.0, 1.0, 0.0]) for f in range(2, 9)]  # samples between them
    assert assign_tracks(rows, max_gap=2)[:3] == [0, 0, 2]  # four samples later: a new track
    # A day of surveillance at one sample a second, a new face in a new place every frame: each frame looks only at
    # the tracks still live (before: at every track ever made, 86,400 x 86,400 / 2 comparisons).
    rows = [_face(f, 0, [f * 100.0, 0, f * 100.0 + 50, 50], face) for f in range(86_400)]
    assert len(set(assign_tracks(rows))) == 86_400


def test_a_cut_to_a_stranger_in_the_same_place_ends_the_track_at_the_same_person_threshold():
    # Two strangers' dlib vectors agree at 0.8-0.9: at 0.7 a cut to the audience continued the singer's track.
    singer, stranger = np.array([1.0, 0.0]), np.array([0.85, np.sqrt(1 - 0.85**2)])
    rows = [_face(0, 0, [10, 10, 60, 60], singer.tolist()), _face(10, 0, [12, 10, 62, 60], stranger.tolist())]
    assert len(set(assign_tracks(rows))) == 1  # the loose default agrees
    assert len(set(assign_tracks(rows, min_cos=0.91))) == 2
