import math

import numpy as np
import torch

from ops.faces.align import dlib_chip, dlib_template, dlib_unit, sharpness, similarity, template, warp


def test_similarity_recovers_a_known_transform():
    src = template("arcface", 112)
    angle, scale, shift = 0.3, 2.5, torch.tensor([40.0, -7.0], dtype=torch.float64)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    dst = (src @ rot.T * scale + shift)[None]
    m = similarity(src, dst)[0]
    torch.testing.assert_close(m[:, :2], rot * scale)
    torch.testing.assert_close(m[:, 2], shift)


def test_dlib_template_is_a_face_centred_in_dlibs_chip():
    t = dlib_template(150, 0.25)
    assert t[0, 0] < t[2, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # left eye, nose, right eye; mouth corners
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above the nose above the mouth
    assert abs(float(t[:, 0].mean()) - 74.5) < 3  # centred
    # The same face at any chip size: FairFace's 300-pixel chip is the 150-pixel one, twice as fine.
    torch.testing.assert_close((dlib_template(300) + 0.5) / 300, (t + 0.5) / 150, atol=0.005, rtol=0)


def test_dlib_unit_inverts_dlib_chip():
    unit = torch.tensor([[0.2, 0.3], [0.8, 0.9], [-0.1, 1.2]], dtype=torch.float64)
    for size, padding in ((150, 0.25), (300, 0.25), (200, 0.2)):
        torch.testing.assert_close(dlib_unit(dlib_chip(unit, size, padding), size, padding), unit)
    # dlib samples its chip's corner pixels (0 and size - 1) at the corners of its rectangle: the unit frame's
    # padded corners land on them.
    corners = torch.tensor([[-0.25, -0.25], [1.25, 1.25]], dtype=torch.float64)
    torch.testing.assert_close(dlib_chip(corners, 150, 0.25), torch.tensor([[0.0, 0.0], [149.0, 149.0]]).double())


def test_warp_puts_the_landmarks_on_the_template():
    # An image with a bright dot at each landmark: after warping, the dots are at the template points.
    points = template("dlib", 150)
    image = torch.zeros(1, 3, 400, 400)
    marks = (points * 1.8 + torch.tensor([60.0, 30.0], dtype=torch.float64)).float() + 0.5  # pixel edges
    for x, y in marks.tolist():
        image[0, :, int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255
    chip = warp(image, torch.zeros(1, dtype=torch.long), marks[None], points, 150)[0, 0]
    for x, y in points.tolist():
        assert chip[round(y), round(x)] > 100


def test_sharpness_is_lower_for_a_blurred_chip():
    rng = np.random.default_rng(0)
    chip = torch.from_numpy(rng.uniform(0, 255, (1, 3, 64, 64)).astype(np.float32))
    blurred = torch.nn.functional.avg_pool2d(chip, 5, 1, 2)
    assert sharpness(blurred)[0] < sharpness(chip)[0] / 10
