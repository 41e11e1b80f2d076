"""Face alignment: a similarity transform from five landmarks to a recogniser's template, and batched chip sampling.

Landmarks are MTCNN's: left eye centre, right eye centre, nose tip, left and right mouth corner (image left/right),
in continuous pixel-edge coordinates. Each recogniser was trained on chips of its own geometry:
- dlib's ResNet on ``get_face_chip(size=150, padding=0.25)`` chips. dlib places its 5-point model's eye corners and
  nose base on a mean face; MTCNN's points are other points of the same face, so where dlib's chips show them is
  measured: fitted to dlib's own chips of real faces (``_DLIB_POINTS``), mapped as dlib maps its template.
- arcface/insightface models on 112x112 chips with the insightface ``arcface_dst`` template;
- facenet-pytorch's InceptionResnetV1 on 160x160: the arcface template scaled to 160.

Chips are sampled with ``grid_sample`` (bilinear); where a chip pixel covers several image pixels the chip is
sampled k times finer and box-averaged (k up to 4), so a face shrunk from a 4K frame is not aliased.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Where dlib's chips show MTCNN's five points (left eye centre, right eye centre, nose tip, left and right mouth
# corner), in dlib's unit face frame (``dlib_chip``): fitted to dlib's own ``get_face_chip`` of the 23 faces that
# dlib's whole pipeline and ours both find in ../shared's photos (``benchmarks/fidelity_faces.py --fit``: the mean
# over faces of our points mapped into dlib's chip). dlib's ResNet was trained on those chips, so ours must show a
# face as they do. The points of dlib's mean face that MTCNN's name (the mean of each eye's six points, the nose tip,
# the mouth corners: (0.2255, 0.2160), (0.7548, 0.2160), (0.4901, 0.5156), (0.2541, 0.7802), (0.7261, 0.7802)) are
# other points of the face: with them our faces came out 5% smaller. Turned heads (the clip's frames) still come out
# about 4% smaller than dlib's chips: there MTCNN's and dlib's points disagree with the pose, which no template fixes.
_DLIB_POINTS = (
    (0.222866, 0.200363),
    (0.767319, 0.202983),
    (0.492500, 0.533885),
    (0.239279, 0.789107),
    (0.749873, 0.788036),
)


def dlib_template(size: int = 150, padding: float = 0.25) -> torch.Tensor:
    """The five MTCNN points where dlib's ``get_face_chip(size, padding)`` puts them (chip pixel centres)."""
    return dlib_chip(torch.tensor(_DLIB_POINTS, dtype=torch.float64), size, padding)


def dlib_chip(unit: torch.Tensor, size: int, padding: float) -> torch.Tensor:
    """Points of dlib's unit face frame -> where dlib's chip of ``size`` and ``padding`` shows them. dlib fits its
    similarity to ``(padding + unit) / (2 padding + 1) * size``, then samples the chip by mapping its corner pixels
    (0 and size - 1) onto the corners of that transform's rectangle (``get_mapping_to_chip``): size - 1 steps span
    what the fit gave size, so every point sits (size - 1) / size as far from the centre, which is (size - 1) / 2.
    (dlib's rectangle is a pixel narrower than size times the scale, which this leaves out: at most 0.7% for a face
    sampled at the chip's own resolution; the fitted points absorb its average.)"""
    nominal = (padding + unit) / (2 * padding + 1) * size
    return (size - 1) / 2 + (nominal - size / 2) * (size - 1) / size


def dlib_unit(chip: torch.Tensor, size: int, padding: float) -> torch.Tensor:
    """The inverse of ``dlib_chip``: chip pixel centres -> dlib's unit face frame."""
    nominal = size / 2 + (chip - (size - 1) / 2) * size / (size - 1)
    return nominal * (2 * padding + 1) / size - padding


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
