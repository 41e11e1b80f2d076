import numpy as np

from ops.testing import synthetic
from ops.training import protocols as training


def test_the_same_seeds_make_the_same_people_and_other_seeds_others():
    world = synthetic.World()
    a, b = synthetic.population(world, 10, 3, seed=1), synthetic.population(world, 10, 3, seed=1)
    assert np.array_equal(a.faces, b.faces) and np.array_equal(a.voices, b.voices)
    c = synthetic.population(world, 10, 3, seed=2)
    assert not np.allclose(a.faces, c.faces)
    assert a.faces.shape == (30, 128) and a.voices.shape == (30, 256)
    assert np.allclose(np.linalg.norm(a.faces, axis=1), 1, atol=1e-5)


def test_faces_verify_people_but_raw_faces_and_voices_are_unrelated():
    world = synthetic.World()
    rec = synthetic.population(world, 60, 4, seed=3)
    faces = training.verification(rec.faces, rec.identity)
    assert 0.1 < faces["eer"] < 0.4  # identity is there, blurred by the recordings' nuisance
    # No map between the spaces yet: comparing a voice with faces through a random projection is chance.
    projection = np.random.default_rng(0).standard_normal((256, 128))
    voices = rec.voices @ projection
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    sources = np.arange(len(rec.identity))
    scores = training.crossmodal(rec.faces, voices, rec.identity, rec.identity, sources, sources)
    assert 0.35 < scores["v2f_1of2"] < 0.65


def test_rows_are_labelled_recordings_with_provenance():
    world = synthetic.World()
    rec = synthetic.population(world, 3, 2, seed=4)
    made = synthetic.rows(world, rec, "s3://b/synthetic", "run-1", first_identity=100)
    assert [r["label"] for r in made["manifest"]] == ["id-0100"] * 2 + ["id-0101"] * 2 + ["id-0102"] * 2
    assert made["manifest"][1]["uri"] == "s3://b/synthetic/id-0100/rec-01.synthetic"
    assert len(made["faces"]) == 6 and len(made["voices"]) == 12  # a segment row and a source row per recording
    assert {r["model_sha256"] for r in made["faces"]} == {synthetic.fingerprint(world)}
    assert synthetic.fingerprint(world) != synthetic.fingerprint(synthetic.World(seed=1))
