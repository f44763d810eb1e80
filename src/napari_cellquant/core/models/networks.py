"""A configurable U-Net family with dense and CenterNet-style detection heads, in pure PyTorch.

Every network here is built from a plain dict (the ``arch`` entry of a model card) by
:func:`build_network`. The dict keys, all optional except where noted:

``type``
    ``"unet"`` (the only family so far).
``in_channels``
    Input channels (3 for RGB, 1 for grey). Default 3.
``widths`` / ``width`` + ``depth``
    Filters per encoder level. ``widths=[16, 32, 64]`` gives them explicitly; otherwise
    ``width * 2**i`` for ``i < depth`` (defaults ``width=16``, ``depth=4``). The number of 2x
    downsamplings equals the number of levels.
``bridge``
    Filters of the bottleneck block; default ``2 * widths[-1]``.
``residual``
    Residual blocks (conv-norm-act-conv-norm + projected shortcut, then act) instead of
    plain double convolutions. Default False.
``norm``
    ``"batch"``, ``"group"`` (``groups`` groups, default 8) or ``"none"``.
``activation``
    ``"relu"``, ``"leaky_relu"`` or ``"elu"``.
``stem_channels``
    When > 0, a learnt 1x1 colour-mixing convolution to this many channels comes first
    (c-ResUnet puts a 1x1 convolution to one channel in front of its residual U-Net).
``upsample``
    ``"transpose"`` (2x2 transposed convolution) or ``"bilinear"`` (bilinear x2 then 1x1 conv).
``n_classes`` and ``heads``
    Dense full-resolution heads, any of ``"classes"`` (``n_classes + 1`` logits, channel 0 is
    background), ``"distance"`` (1 channel, distance to the object boundary normalised to
    [0, 1] per object, used to split touching cells; no activation) and ``"boundary"``
    (1 channel logit).
``detector``
    ``None`` or a dict ``{"n_classes": K, "stride": 4, "size_encoding": "log",
    "head_width": 64}`` adding an anchor-free CenterNet-style head at output stride ``stride``
    (a power of two up to ``2**depth``):

    * ``heatmap``: K logits per cell; a peak marks an object centre.
    * ``size``: 2 channels, (width, height) of the object's box in *input* pixels. With
      ``size_encoding="log"`` the channels hold ``log(w), log(h)`` (decode with ``exp``;
      ``output_activations`` says so, and tiled inference returns pixels), with ``"direct"``
      they hold ``w, h``.
    * ``offset``: 2 channels, (dx, dy): the sub-cell position of the centre, in output cells,
      so the centre of a peak at cell (row i, column j) is
      ``x = (j + dx) * stride``, ``y = (i + dy) * stride`` in input pixels.

Padding is "same" everywhere. Inputs whose height or width is not a multiple of
``2**depth`` are padded (replicate) at the bottom/right inside ``forward`` and the outputs are
cropped back, so any size works; the tiled inference engine chooses tiles that are multiples
of ``network.size_multiple`` so that this never happens on its hot path.

``forward`` returns ``dict[str, Tensor]``: full-resolution heads are ``(N, C, H, W)``,
detection heads ``(N, C, ceil(H / stride), ceil(W / stride))``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

if TYPE_CHECKING:
    from .efficientnet import EfficientUNet

DENSE_HEADS = ("classes", "distance", "boundary")
DETECTION_HEADS = ("heatmap", "size", "offset")

_ARCH_KEYS = {
    "type",
    "in_channels",
    "width",
    "depth",
    "widths",
    "bridge",
    "residual",
    "norm",
    "groups",
    "activation",
    "stem_channels",
    "upsample",
    "n_classes",
    "heads",
    "detector",
}
_DETECTOR_KEYS = {"n_classes", "stride", "size_encoding", "head_width"}
_ACTIVATIONS = ("relu", "leaky_relu", "elu")
_NORMS = ("batch", "group", "none")
_UPSAMPLES = ("transpose", "bilinear")

# CenterNet initialises the heatmap bias so that every cell starts at p = 0.1 (focal-loss prior).
_HEATMAP_PRIOR_BIAS = -math.log((1 - 0.1) / 0.1)


def _bad(problem: str) -> InputError:
    return InputError(f"network architecture: {problem}")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"{key} must be a positive integer, got {value!r}")
    return value


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    return nn.ELU(inplace=True)


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # GroupNorm needs channels divisible by groups; fall back to the largest divisor.
        g = math.gcd(channels, groups) or 1
        return nn.GroupNorm(g, channels)
    return nn.Identity()


class ConvNormAct(nn.Module):
    """``k x k`` same-padded convolution, normalisation, optional activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kernel: int = 3,
        norm: str = "batch",
        groups: int = 8,
        activation: str | None = "relu",
    ) -> None:
        super().__init__()
        # A bias before a normalisation layer is redundant (the norm's shift absorbs it).
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none")
        self.norm = _norm(norm, cout, groups)
        self.act = _activation(activation) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold an eval-mode BatchNorm into the convolution (inference only, exact in fp32)."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        bn = self.norm
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None, "BatchNorm without running statistics"
        scale = bn.weight / torch.sqrt(var + bn.eps)
        conv = self.conv
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]  # a Conv2d's own 2-tuple
            padding=conv.padding,  # type: ignore[arg-type]
            bias=True,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        assert fused.bias is not None
        fused.bias.copy_((bias - mean) * scale + bn.bias)
        self.conv = fused
        self.norm = nn.Identity()


class DoubleConv(nn.Module):
    """Two ConvNormAct layers: the plain U-Net block."""

    def __init__(self, cin: int, cout: int, *, norm: str, groups: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(cin, cout, norm=norm, groups=groups, activation=activation),
            ConvNormAct(cout, cout, norm=norm, groups=groups, activation=activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm plus a (1x1-projected when needed) shortcut, then activation."""

    def __init__(self, cin: int, cout: int, *, norm: str, groups: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(cin, cout, norm=norm, groups=groups, activation=activation),
            ConvNormAct(cout, cout, norm=norm, groups=groups, activation=None),
        )
        self.shortcut: nn.Module
        if cin == cout:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = ConvNormAct(
                cin, cout, kernel=1, norm=norm, groups=groups, activation=None
            )
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Up(nn.Module):
    """x2 upsampling to ``cout`` channels, concatenation with the skip, then a block."""

    def __init__(self, cin: int, cout: int, *, mode: str, block: type[nn.Module], **kw: Any):
        super().__init__()
        self.up: nn.Module
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cout, 1),
            )
        self.block = block(2 * cout, cout, **kw)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class DetectionHead(nn.Module):
    """CenterNet-style head: 3x3 conv + ReLU, then a 1x1 conv to ``cout`` channels."""

    def __init__(self, cin: int, width: int, cout: int, bias_init: float | None = None):
        super().__init__()
        self.hidden = nn.Conv2d(cin, width, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(width, cout, 1)
        if bias_init is not None and self.out.bias is not None:
            nn.init.constant_(self.out.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x)))


def make_heads(
    arch: Mapping[str, Any], dense_features: int, detector_features: int
) -> tuple[nn.ModuleDict, dict[str, int], dict[str, int]]:
    """The heads a normalised ``arch`` asks for, on features of the given widths, with their
    output channels and strides (shared by every network family)."""
    heads = nn.ModuleDict()
    channels: dict[str, int] = {}
    strides: dict[str, int] = {}
    for name in arch["heads"]:
        cout = arch["n_classes"] + 1 if name == "classes" else 1
        heads[name] = nn.Conv2d(dense_features, cout, 1)
        channels[name], strides[name] = cout, 1
    det = arch["detector"]
    if det:
        hw = det["head_width"]
        heads["heatmap"] = DetectionHead(
            detector_features, hw, det["n_classes"], _HEATMAP_PRIOR_BIAS
        )
        heads["size"] = DetectionHead(detector_features, hw, 2)
        heads["offset"] = DetectionHead(detector_features, hw, 2)
        for name, c in (("heatmap", det["n_classes"]), ("size", 2), ("offset", 2)):
            channels[name], strides[name] = c, det["stride"]
    return heads, channels, strides


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` padded (replicate) at the bottom and right to a multiple of ``multiple``; the
    heads' outputs are cropped back (:func:`apply_heads`)."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def apply_heads(
    heads: nn.ModuleDict,
    strides: Mapping[str, int],
    dense: torch.Tensor,
    detection: torch.Tensor | None,
    shape: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Every head on its features, cropped to the input's ``shape`` (rows, columns) at its
    stride (inputs are padded to the network's size multiple)."""
    h, w = shape
    out: dict[str, torch.Tensor] = {}
    for name, head in heads.items():
        stride = strides[name]
        y = head(detection if stride > 1 else dense)
        out[name] = y[..., : -(-h // stride), : -(-w // stride)]
    return out


def head_activations(arch: Mapping[str, Any], head_channels: Mapping[str, int]) -> dict[str, str]:
    """Head name -> activation that turns its raw output into a map (used by inference)."""
    acts = {
        "classes": "softmax",
        "distance": "identity",
        "boundary": "sigmoid",
        "heatmap": "sigmoid",
        "offset": "identity",
    }
    det = arch["detector"]
    if det is not None:
        acts["size"] = "exp" if det["size_encoding"] == "log" else "identity"
    return {k: acts[k] for k in head_channels}


class UNet(nn.Module):
    """U-Net / residual U-Net with optional colour-mixing stem, dense and detection heads.

    Build it with :func:`build_network` from an architecture dict (see the module docstring).

    Attributes
    ----------
    arch
        The normalised architecture dict (all defaults filled in); JSON-serialisable.
    in_channels
        Channels the network expects.
    size_multiple
        ``2**depth``: inputs of this multiple run without internal padding.
    output_strides
        Head name -> output stride (1 for dense heads).
    head_channels
        Head name -> number of output channels.
    """

    def __init__(self, arch: Mapping[str, Any]) -> None:
        super().__init__()
        a = _normalise_arch(arch)
        self.arch = a
        self.in_channels: int = a["in_channels"]
        widths: list[int] = a["widths"]
        depth = len(widths)
        self.size_multiple = 2**depth
        kw = {"norm": a["norm"], "groups": a["groups"], "activation": a["activation"]}
        block: type[nn.Module] = ResidualBlock if a["residual"] else DoubleConv

        cin = self.in_channels
        self.stem: nn.Module = nn.Identity()
        if a["stem_channels"]:
            self.stem = nn.Conv2d(cin, a["stem_channels"], 1)
            cin = a["stem_channels"]

        self.encoder = nn.ModuleList()
        for w in widths:
            self.encoder.append(block(cin, w, **kw))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bridge = block(cin, a["bridge"], **kw)

        det = a["detector"]
        dense = list(a["heads"])
        # The decoder climbs back only as far as the highest resolution any head needs: a
        # detector-only network stops at its stride, which saves the costly top levels.
        det_level = int(math.log2(det["stride"])) if det else depth
        top_level = 0 if dense else det_level
        self.decoder = nn.ModuleList()
        cin = a["bridge"]
        for level in range(depth - 1, top_level - 1, -1):
            self.decoder.append(Up(cin, widths[level], mode=a["upsample"], block=block, **kw))
            cin = widths[level]
        self._det_level = det_level

        feat = widths[det_level] if det_level < depth else a["bridge"]
        self.heads, self.head_channels, self.output_strides = make_heads(a, widths[0], feat)

    @property
    def output_activations(self) -> dict[str, str]:
        """Head name -> activation that turns its raw output into a map (used by inference)."""
        return head_activations(self.arch, self.head_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.size_multiple)
        x = self.stem(x)
        skips = []
        for enc in self.encoder:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        depth = len(skips)
        det_feat = x if self._det_level == depth else None
        level = depth
        for up in self.decoder:
            level -= 1
            x = up(x, skips[level])
            if level == self._det_level:
                det_feat = x
        return apply_heads(self.heads, self.output_strides, x, det_feat, (h, w))

    def fuse_for_inference(self) -> UNet:
        """Return an eval-mode copy with BatchNorm folded into the convolutions.

        Same outputs as ``self.eval()`` up to float rounding, one memory pass less per layer.
        """
        fused = copy.deepcopy(self).eval()
        for module in fused.modules():
            if isinstance(module, ConvNormAct):
                module.fuse_batchnorm()
        return fused


def _normalise_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an architecture dict and fill in defaults (raises InputError)."""
    if not isinstance(arch, Mapping):
        raise _bad(f"expected a dict, got {type(arch).__name__}")
    unknown = set(arch) - _ARCH_KEYS
    if unknown:
        raise _bad(f"unknown key(s) {sorted(unknown)}; known: {sorted(_ARCH_KEYS)}")
    a: dict[str, Any] = dict(arch)
    if a.setdefault("type", "unet") != "unet":
        raise _bad(f"unknown type {a['type']!r} (known: 'unet', 'efficientnet-unet')")

    a["in_channels"] = _positive_int("in_channels", a.get("in_channels", 3))
    if a.get("widths") is not None:
        widths = a["widths"]
        if not isinstance(widths, (list, tuple)) or not widths:
            raise _bad(f"widths must be a non-empty list, got {widths!r}")
        a["widths"] = [_positive_int("widths", w) for w in widths]
    else:
        width = _positive_int("width", a.get("width", 16))
        depth = _positive_int("depth", a.get("depth", 4))
        a["widths"] = [width * 2**i for i in range(depth)]
    a["width"] = a["widths"][0]
    a["depth"] = len(a["widths"])
    a["bridge"] = _positive_int("bridge", a.get("bridge") or 2 * a["widths"][-1])
    a["residual"] = bool(a.get("residual", False))
    for key, allowed, default in (
        ("norm", _NORMS, "batch"),
        ("activation", _ACTIVATIONS, "relu"),
        ("upsample", _UPSAMPLES, "transpose"),
    ):
        value = a.setdefault(key, default)
        if value not in allowed:
            raise _bad(f"{key} must be one of {allowed}, got {value!r}")
    a["groups"] = _positive_int("groups", a.get("groups", 8))
    stem = a.get("stem_channels") or 0
    a["stem_channels"] = 0 if stem == 0 else _positive_int("stem_channels", stem)
    a.update(_normalise_heads(a, depth=a["depth"]))
    return a


def _normalise_heads(arch: Mapping[str, Any], *, depth: int) -> dict[str, Any]:
    """Validate the ``heads``, ``n_classes`` and ``detector`` keys shared by every family."""
    a: dict[str, Any] = {}

    heads = arch.get("heads", ["classes"])
    if isinstance(heads, str) or not isinstance(heads, (list, tuple)):
        raise _bad(f"heads must be a list of names, got {heads!r}")
    bad_heads = [h for h in heads if h not in DENSE_HEADS]
    if bad_heads:
        raise _bad(f"unknown head(s) {bad_heads}; dense heads are {DENSE_HEADS}")
    a["heads"] = list(dict.fromkeys(heads))
    a["n_classes"] = _positive_int("n_classes", arch.get("n_classes", 1))
    det = arch.get("detector")
    if det is not None:
        if not isinstance(det, Mapping):
            raise _bad(f"detector must be a dict or null, got {det!r}")
        unknown = set(det) - _DETECTOR_KEYS
        if unknown:
            raise _bad(f"unknown detector key(s) {sorted(unknown)}")
        det = dict(det)
        det["n_classes"] = _positive_int("detector.n_classes", det.get("n_classes", 1))
        stride = _positive_int("detector.stride", det.get("stride", 4))
        if stride & (stride - 1) or stride > 2**depth:
            raise _bad(f"detector.stride must be a power of two <= 2**depth, got {stride}")
        det["stride"] = stride
        det["head_width"] = _positive_int("detector.head_width", det.get("head_width", 64))
        enc = det.setdefault("size_encoding", "log")
        if enc not in ("log", "direct"):
            raise _bad(f"detector.size_encoding must be 'log' or 'direct', got {enc!r}")
    a["detector"] = det
    if not a["heads"] and det is None:
        raise _bad("no heads: give at least one of heads=[...] or detector={...}")
    return a


def build_network(arch: Mapping[str, Any]) -> UNet | EfficientUNet:
    """Build a network from a plain architecture dict (as stored in a model card).

    Parameters
    ----------
    arch
        Architecture description; see the module docstring for the keys. A name from
        :data:`DEFAULT_ARCHS` is not accepted here: pass ``DEFAULT_ARCHS[name]``.

    Returns
    -------
    UNet
        A freshly initialised network (random weights) in training mode.

    Raises
    ------
    InputError
        When the dict has unknown keys or invalid values.
    """
    if isinstance(arch, Mapping) and arch.get("type") == "efficientnet-unet":
        from .efficientnet import EfficientUNet

        return EfficientUNet(arch)
    return UNet(arch)


def count_parameters(network: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)


#: Built-in architectures, keyed by the model names used in model cards.
DEFAULT_ARCHS: dict[str, dict[str, Any]] = {
    # Blood smears, 10-class set (9 classes + background), distance map to split touching RBCs.
    "blood-unet": {
        "type": "unet",
        "in_channels": 3,
        "width": 16,
        "depth": 4,
        "residual": False,
        "norm": "batch",
        "activation": "relu",
        "upsample": "transpose",
        "n_classes": 9,
        "heads": ["classes", "distance"],
    },
    # c-ResUnet-like fluorescence cell segmenter: 1x1 colour-mixing stem to one channel,
    # residual blocks 16/32/64 with a 128 bridge, ELU + batch norm, one foreground class.
    "fluo-resunet": {
        "type": "unet",
        "in_channels": 3,
        "widths": [16, 32, 64],
        "bridge": 128,
        "residual": True,
        "norm": "batch",
        "activation": "elu",
        "stem_channels": 1,
        "upsample": "transpose",
        "n_classes": 1,
        "heads": ["classes", "distance"],
    },
    # Blood detector: ImageNet-pretrained EfficientNet-Lite0, U-Net decoder to stride 4, a
    # CenterNet head for rbc / wbc / platelet (instances are drawn from its boxes).
    "blood-detector": {
        "type": "efficientnet-unet",
        "in_channels": 3,
        "decoder": [96, 64, 48],
        "heads": [],
        "detector": {"n_classes": 3, "stride": 4, "size_encoding": "log", "head_width": 64},
    },
    # NET area: ImageNet-pretrained EfficientNet-Lite0 on the DNA stain and, optionally, the
    # histone stain (a DNA-only image gives its DNA twice), U-Net decoder to full resolution,
    # NET region vs background.
    "net-area": {
        "type": "efficientnet-unet",
        "in_channels": 2,
        "decoder": [64, 48, 32, 24, 16],
        "heads": ["classes"],
        "n_classes": 1,
    },
    # NET box detector: U-Net encoder/decoder to stride 4 and a CenterNet head for net4.
    "net-centernet": {
        "type": "unet",
        "in_channels": 3,
        "width": 16,
        "depth": 4,
        "residual": False,
        "norm": "batch",
        "activation": "relu",
        "upsample": "transpose",
        "heads": [],
        "detector": {"n_classes": 4, "stride": 4, "size_encoding": "log", "head_width": 64},
    },
}
