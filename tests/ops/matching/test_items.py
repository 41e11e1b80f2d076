import pyarrow as pa
import pytest

from ops.matching import items


@pytest.mark.parametrize(
    "key, item",
    [
        ("s3://b/a.jpg#frame=0&face=2", items.Item("s3://b/a.jpg", frame=0, face=2)),
        ("/x/v.mp4#segment=7", items.Item("/x/v.mp4", segment=7)),
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
