"""Our whole face path against dlib's on real photos (../shared; skipped without it): chips that show a face as
dlib's chips do (the ResNet was trained on those), descriptors equal to dlib's on the faces both find, and the
verification decisions of every pair of the one-person photos. Detections against facenet-pytorch's MTCNN are pinned
in ``test_mtcnn_reference.py``."""

import numpy as np
import pytest

from ops.faces.align import dlib_template
from ops.faces.pipeline import FacePipeline
from ops.models.catalogue import build, load
from ops.testing.references import (
    DlibPipeline,
    chip_geometry,
    euclidean_scores,
    labelled_photos,
    largest,
    paired_faces,
    real_photos,
    verification_pairs,
)
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def pipelines(face_models, dlib_files):
    ours = FacePipeline(build(load("mtcnn", face_models), "cpu"), build(load("dlib-resnet-v1", face_models), "cpu"))
    return ours, DlibPipeline(dlib_files["dlib"], dlib_files["shape"])


@pytest.fixture(scope="module")
def pairs(pipelines):
    photos = [(name, rgb) for name, rgb in real_photos(shared_data("faces")) if "#t=" not in name]
    return paired_faces(photos, *pipelines)


@pytest.mark.parametrize("size", [150, 300])  # the recogniser's chip, FairFace's
def test_chips_show_each_face_as_dlibs_chips_do(pairs, size):
    assert len(pairs) >= 20
    ratios, offsets = chip_geometry(pairs, dlib_template(size), size)
    # Systematically: per face the two differ by where MTCNN and dlib's 5-point model put its points.
    assert abs(np.exp(np.log(ratios).mean()) - 1) < 0.01, ratios
    assert np.linalg.norm(offsets.mean(axis=0)) * 150 / size < 1.0, offsets


def test_descriptors_are_dlibs_on_the_faces_both_find(pairs):
    cosines = []
    for _, ours, i, theirs in pairs:
        a, b = ours.embeddings[i], theirs.descriptor
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert np.median(cosines) >= 0.99 and min(cosines) > 0.98, sorted(cosines)[:5]


def test_verification_decisions_of_the_whole_path_on_real_photos(pipelines):
    ours, dlib = pipelines
    photos = labelled_photos(shared_data("faces"))
    vectors, references, people = [], [], []
    for _, person, rgb in photos:
        (found,) = ours([rgb])
        theirs = dlib(rgb, sizes=(150,))
        k, kd = largest(found.boxes), largest(np.array([f.box for f in theirs]).reshape(-1, 4))
        assert k is not None and kd is not None
        vectors.append(found.embeddings[k])
        references.append(theirs[kd].descriptor)
        people.append(person)
    i, j, same = verification_pairs(people)
    assert len(same) >= 100 and same.sum() >= 15
    accepted = euclidean_scores(np.array(vectors), i, j) > -0.6  # dlib's own threshold
    wrong = accepted != same
    assert not wrong.any(), [(people[a], people[b]) for a, b in zip(i[wrong], j[wrong], strict=True)]
    assert (accepted == (euclidean_scores(np.array(references), i, j) > -0.6)).all()
