"""Face alignment: a similarity transform from five landmarks to a recogniser's template, and batched chip sampling.

Landmarks are MTCNN's: left eye centre, right eye centre, nose tip, left and right mouth corner (image left/right),
in continuous pixel-edge coordinates. Each recogniser was trained on chips of its own geometry:
- dlib's ResNet on ``get_face_chip(size=150, padding=0.25)`` chips. dlib places the 5-point model's eye corners and
  nose base on a mean face; MTCNN's points are other points of the same face, so their template is taken from the
  same mean face in dlib's source (the 68-point ``mean_face_shape``: eye centres as the mean of each eye's six
  points, the nose tip, the mouth corners), mapped through dlib's padding formula. It is dlib's geometry, not a fit
  to any images.
- arcface/insightface models on 112x112 chips with the insightface ``arcface_dst`` template;
- facenet-pytorch's InceptionResnetV1 on 160x160: the arcface template scaled to 160.

Chips are sampled with ``grid_sample`` (bilinear); where a chip pixel covers several image pixels the chip is
sampled k times finer and box-averaged (k up to 4), so a face shrunk from a 4K frame is not aliased.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# dlib's mean face (dlib/image_transforms/interpolation.h, get_face_chip_details), unit square, pixel centres.
_DLIB_MEAN_FACE = {
    "left_eye": (0.225492, 0.215990),  # mean of points 36-41
    "right_eye": (0.754761, 0.215990),  # mean of points 42-47
    "nose_tip": (0.490127, 0.515625),  # point 30
    "mouth_left": (0.254149, 0.780233),  # point 48
    "mouth_right": (0.726104, 0.780233),  # point 54
}


def dlib_template(size: int = 150, padding: float = 0.25) -> torch.Tensor:
    """The five MTCNN points where dlib's ``get_face_chip(size, padding)`` puts them (pixel-centre coordinates)."""
    unit = torch.tensor(list(_DLIB_MEAN_FACE.values()), dtype=torch.float64)
    return (padding + unit) / (2 * padding + 1) * size


ARCFACE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)  # insightface's arcface_dst, pixel-centre coordinates in a 112x112 chip


def template(kind: str, size: int) -> torch.Tensor:
    """Template points for a recogniser family: 'dlib', 'arcface' or 'facenet'."""
    if kind == "dlib":
        return dlib_template(size)
    if kind in ("arcface", "facenet"):
        return ARCFACE_112 * (size / 112)
    raise ValueError(f"unknown alignment template {kind!r}")


def similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms (rotation, uniform scale, shift) taking ``src`` points onto ``dst``.
    src (P, 2) or (N, P, 2), dst (N, P, 2) -> (N, 2, 3) matrices acting on [x, y, 1]."""
    src = src.to(torch.float64).expand_as(dst)
    dst = dst.to(torch.float64)
    n, p, _ = dst.shape
    u, v = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    # x = a u - b v + tx ;  y = b u + a v + ty
    rows_x = torch.stack([u, -v, one, zero], dim=-1)
    rows_y = torch.stack([v, u, zero, one], dim=-1)
    a = torch.cat([rows_x, rows_y], dim=1)
    b = torch.cat([dst[..., 0], dst[..., 1]], dim=1).unsqueeze(-1)
    sol = torch.linalg.lstsq(a.cpu(), b.cpu()).solution.squeeze(-1).to(dst.device)
    sa, sb, tx, ty = sol.unbind(-1)
    return torch.stack([torch.stack([sa, -sb, tx], -1), torch.stack([sb, sa, ty], -1)], dim=1)


def warp(
    images: torch.Tensor, image_idx: torch.Tensor, landmarks: torch.Tensor, points: torch.Tensor, size: int
) -> torch.Tensor:
    """Aligned chips (K, C, size, size) float 0-255: face k from ``images[image_idx[k]]`` (N, C, H, W), its
    landmarks (K, 5, 2) in pixel-edge coordinates mapped onto template ``points`` (5, 2) in pixel centres."""
    k_faces = len(landmarks)
    _, channels, height, width = images.shape
    if k_faces == 0:
        return images.new_zeros(0, channels, size, size, dtype=torch.float32)
    matrices = similarity(points, landmarks.to(torch.float64) - 0.5)  # chip centres -> image centres
    scale = matrices[:, 0, :2].norm(dim=1)  # image pixels per chip pixel
    factors = scale.ceil().clamp(1, 4).to(torch.int64)
    chips = images.new_zeros(k_faces, channels, size, size, dtype=torch.float32)
    for k in factors.unique().tolist():
        sel = (factors == k).nonzero(as_tuple=True)[0]
        fine = size * k
        coords = (torch.arange(fine, dtype=torch.float64, device=images.device) + 0.5) / k - 0.5  # chip centres
        m = matrices[sel].view(-1, 2, 3, 1, 1)
        gx, gy = coords.view(1, fine), coords.view(fine, 1)
        # Image centres of every chip sample, in grid_sample's [-1, 1] (by broadcasting: a matmul over a stacked
        # grid of fine*fine points cost ten times as much on a CPU).
        x = (m[:, 0, 0] * gx + m[:, 0, 1] * gy + m[:, 0, 2] + 0.5) * (2 / width) - 1
        y = (m[:, 1, 0] * gx + m[:, 1, 1] * gy + m[:, 1, 2] + 0.5) * (2 / height) - 1
        pts = torch.stack([x, y], dim=-1).to(torch.float32)  # (S, fine, fine, 2)
        # Each image sampled once for all its faces, their grids stacked (one float copy of one image at a time: a
        # copy per face would take 22 GB for a crowd of 150 on a 4K photo).
        owners = image_idx[sel]
        for i in owners.unique().tolist():
            mine = (owners == i).nonzero(as_tuple=True)[0]
            grid = pts[mine].reshape(1, len(mine) * fine, fine, 2)
            source = images[i : i + 1].float()
            sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled = sampled.reshape(channels, len(mine), fine, fine).transpose(0, 1)
            chips[sel[mine]] = F.avg_pool2d(sampled, k) if k > 1 else sampled
    return chips


def sharpness(chips: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of each chip's luminance (0-255 scale): low for blurred or out-of-focus faces."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=chips.device).view(1, 3, 1, 1)
    grey = (chips * weights).sum(dim=1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=chips.device).view(1, 1, 3, 3)
    return F.conv2d(grey, kernel).flatten(1).var(dim=1)


def eye_distance(landmarks: torch.Tensor) -> torch.Tensor:
    """Inter-ocular distance in source pixels: the resolution a face really has, whatever its box says."""
    return (landmarks[:, 1] - landmarks[:, 0]).norm(dim=1)
