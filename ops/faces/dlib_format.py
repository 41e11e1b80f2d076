"""A reader for dlib's binary serialisation of DNNs (``serialize("net.dat") << net``), enough to take the weights of
dlib's pretrained networks without dlib.

The format is dlib's own (dlib/serialize.h, dlib/dnn/core.h, dlib/dnn/layers.h):
- integers: one control byte (low 4 bits: byte count, 0x80: negative), then that many little-endian bytes;
- floats: mantissa and exponent as two such integers (value = mantissa * 2**exponent);
- strings: a length, then bytes; bools: the ASCII byte '1' or '0';
- tensors: version 2, four sizes (n, k, rows, cols), then raw little-endian float32;
- a network: the loss layer, then one version number per layer from the outermost in (an add_layer writes its
  version, then its whole subnetwork, then its own details), so the file holds every header first and the layers'
  details afterwards, innermost first. Tag and skip layers write a version (1) and no details.

``read_net`` returns those details in order, input first; the model module checks them against its own topology.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DlibFormatError(ValueError):
    """Bytes that are not the dlib network this reader expects."""


@dataclass
class Layer:
    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc", "bn_con"
    version: str  # the tag dlib wrote, e.g. "con_4"
    params: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, int | float] = field(default_factory=dict)


@dataclass
class Net:
    loss: str
    loss_config: dict[str, float]
    input: str
    input_config: dict[str, float | int]
    layers: list[Layer]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"truncated at byte {self.pos} (wanted {n} more of {len(self.data)})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise DlibFormatError(f"not an integer at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # dlib's codes for inf, -inf and nan
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(mantissa) * 2.0**exponent

    def string(self) -> str:
        return self._take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"not a bool at byte {self.pos - 1}")
        return ch == b"1"

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).copy()

    def alias(self) -> tuple[int, ...]:
        if (version := self.int()) != 1:
            raise DlibFormatError(f"alias_tensor version {version} at byte {self.pos}")
        return tuple(self.int() for _ in range(4))

    def peek_string(self) -> bool:
        """Whether a string (not a small version number) starts here: versions are 1-3, our names are longer."""
        saved = self.pos
        try:
            return self.int() > 3
        finally:
            self.pos = saved


def _split_params(params: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    flat, out, offset = params.reshape(-1), {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[offset : offset + n].reshape(shape)
        offset += n
    if offset != flat.size:
        raise DlibFormatError(f"params hold {flat.size} values, the layer's parts {offset}")
    return out


def _geometry(r: _Reader) -> dict[str, int]:
    return {k: r.int() for k in ("rows", "cols", "stride_y", "stride_x", "pad_y", "pad_x")}


def _details(r: _Reader) -> Layer:
    version = r.string()
    kind = version.rstrip("0123456789").rstrip("_")
    if kind == "con" and version in ("con_4", "con_5", "con_6"):
        params = r.tensor()
        filters = r.int()
        config = {"filters": filters, **_geometry(r)}
        shapes = {"weight": r.alias(), "bias": r.alias()}
        config |= {k: r.float() for k in ("lr", "wd", "bias_lr", "bias_wd")}
        if version in ("con_5", "con_6"):
            config["use_bias"] = r.bool()
        if version == "con_6":
            config["use_relu"] = r.bool()
        return Layer("con", version, _split_params(params, shapes), config)
    if kind == "affine" and version in ("affine_", "affine_2"):
        params = r.tensor()
        shapes = {"gamma": r.alias(), "beta": r.alias()}
        config = {"mode": r.int()}
        if version == "affine_2":
            config["disabled"] = r.bool()
        return Layer("affine", version, _split_params(params, shapes), config)
    if kind == "bn_con" and version == "bn_con2":
        params = r.tensor()
        shapes = {"gamma": r.alias(), "beta": r.alias()}
        tensors = {k: r.tensor() for k in ("means", "invstds", "running_means", "running_variances")}
        config = {"num_updates": r.int(), "window": r.int()}
        config |= {k: r.float() for k in ("lr", "wd", "bias_lr", "bias_wd", "eps")}
        return Layer("bn_con", version, _split_params(params, shapes) | tensors, config)
    if kind == "relu" and version in ("relu_", "relu_2"):
        return Layer("relu", version, config={"disabled": r.bool()} if version == "relu_2" else {})
    if kind in ("max_pool", "avg_pool") and version.endswith("_2"):
        return Layer(kind, version, config=_geometry(r))
    if kind == "add_prev":
        return Layer("add_prev", version)
    if kind == "fc" and version in ("fc_2", "fc_3"):
        outputs, inputs = r.int(), r.int()
        params = r.tensor()
        shapes = {"weight": r.alias(), "bias": r.alias()}
        config = {"outputs": outputs, "inputs": inputs, "bias_mode": r.int()}
        config |= {k: r.float() for k in ("lr", "wd", "bias_lr", "bias_wd")}
        if version == "fc_3":
            config["use_bias"] = r.bool()
        return Layer("fc", version, _split_params(params, shapes), config)
    raise DlibFormatError(f"layer {version!r} at byte {r.pos} is not one this reader knows")


def read_net(data: bytes) -> Net:
    """Parse a dlib DNN file whose input layer is an RGB image and whose layers are con/affine/relu/pooling/add_prev/fc
    with tags and skips (dlib's ResNet face recogniser and its kin)."""
    r = _Reader(data)
    if r.int() != 1:
        raise DlibFormatError("not a dlib network file (no add_loss_layer version 1 at its start)")
    loss = r.string()
    loss_config = {"margin": r.float(), "dist_thresh": r.float()} if loss == "loss_metric_2" else {}
    headers = []  # layer versions, outermost first; tags and skips are version 1, add_layers 2 or 3
    while not r.peek_string():
        headers.append(r.int())
    inner_version = headers[-1]
    layer_versions = [v for v in headers if v >= 2][::-1]  # innermost first, matching the details order
    name = r.string()
    if not name.startswith("input_rgb_image"):
        raise DlibFormatError(f"input layer {name!r} is not an RGB image input")
    input_config: dict[str, float | int] = {"avg_red": r.float(), "avg_green": r.float(), "avg_blue": r.float()}
    if name == "input_rgb_image_sized":
        input_config |= {"rows": r.int(), "cols": r.int()}
    layers = []
    for i, version in enumerate(layer_versions):
        layers.append(_details(r))
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
            r.bool()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if i == 0:
            r.tensor()  # grad_final
            if inner_version >= 3:
                r.int()  # sample expansion factor
        elif version >= 2:
            r.tensor()  # params_grad
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} bytes left after the network: not the layout expected")
    return Net(loss, loss_config, name, input_config, layers)
