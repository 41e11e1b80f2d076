import numpy as np
import pyarrow as pa
import pytest

from ops.matching import items


@pytest.mark.parametrize(
    "key, item",
    [
        ("s3://b/a.jpg#frame=0&face=2", items.Item("s3://b/a.jpg", frame=0, face=2)),
        ("/x/v.mp4#segment=7", items.Item("/x/v.mp4", segment=7)),
        ("/x/v.mp4#track=3&t=4.02,7.00", items.Item("/x/v.mp4", track=3, span=(4.02, 7.0))),
        ("/x/v.mp4#voice", items.Item("/x/v.mp4", modality="voice")),
        ("/x/v.mp4#face", items.Item("/x/v.mp4", modality="face")),
        ("/x/v.mp4", items.Item("/x/v.mp4")),
        ("/x/odd#name.jpg", items.Item("/x/odd#name.jpg")),  # a '#' in the uri is not a fragment we wrote
        ("/x/odd#1.jpg#frame=3&face=0", items.Item("/x/odd#1.jpg", frame=3, face=0)),
    ],
)
def test_keys_parse_back(key, item):
    assert items.parse(key) == item


def test_keys_are_written_one_way():
    assert items.face_key("u", 3, 1) == "u#frame=3&face=1"
    assert items.segment_key("u", 4) == "u#segment=4"
    assert items.track_key("u", 2, 4.019, 7.0) == "u#track=2&t=4.02,7.00"
    assert items.modality_key("u", "voice") == "u#voice"
    with pytest.raises(ValueError):
        items.modality_key("u", "smell")
    table = pa.table({"uri": ["a", "b"], "frame_index": [0, 5], "face_index": [1, 0], "segment_index": [2, 3]})
    assert items.keys(table, "faces") == ["a#frame=0&face=1", "b#frame=5&face=0"]
    assert items.keys(table, "voices") == ["a#segment=2", "b#segment=3"]


def test_the_clearest_face_stands_for_its_source():
    faces = pa.table(
        {
            "uri": ["a", "a", "a", "b"],
            "face_index": [0, 1, 2, 0],
            "face_size": [40.0, 80.0, 80.0, 10.0],
            "score": [0.99, 0.90, 0.95, 0.5],
        }
    )
    best = items.clearest_faces(faces).to_pylist()
    assert [(r["uri"], r["face_index"]) for r in best] == [("a", 2), ("b", 0)]  # largest, then most confident
    assert items.clearest_faces(faces.slice(0, 0)).num_rows == 0


def test_a_photo_is_every_face_and_a_video_every_track():
    faces = pa.table(
        {
            "uri": ["group.jpg", "group.jpg", "clip.mp4", "clip.mp4", "clip.mp4", "clip.mp4"],
            "sha256": ["g", "g", "c", "c", "c", "c"],
            "frame_index": [0, 0, 25, 50, 75, 50],
            "face_index": [0, 1, 0, 0, 0, 1],
            "timestamp": [None, None, 1.0, 2.0, 3.0, 2.0],
            "track_id": [None, None, 0, 0, 0, 1],
            "score": [0.99, 0.98, 0.9, 0.99, 0.9, 0.95],
            "eye_distance": [20.0, 18.0, 20.0, 30.0, 20.0, 10.0],
            "embedding": [[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0], [float("nan"), 0.0], [1.0, 1.0]],
        }
    )
    tracked = items.tracked_faces(faces)
    assert items.keys(tracked, "faces") == [
        "group.jpg#frame=0&face=0",
        "group.jpg#frame=0&face=1",  # both people of a group photo, not its clearest face alone
        "clip.mp4#track=0&t=1.00,3.00",  # seen from 1 s to 3 s
        "clip.mp4#track=1&t=2.00,2.00",
    ]
    track = tracked.to_pylist()[2]
    assert track["frame_index"] == 50  # its clearest face stands for it in a report
    # a track is the mean of its good faces' unit vectors: a profile frame alone does not decide who it is
    np.testing.assert_allclose(track["embedding"], [0.5, 0.5])
    assert items.tracked_faces(faces.slice(0, 0)).num_rows == 0
