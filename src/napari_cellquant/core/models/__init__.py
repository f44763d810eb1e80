"""Networks (U-Net family with dense and detection heads); model cards and weights come later.

Importing this package imports torch.
"""

from __future__ import annotations

from .networks import (
    DEFAULT_ARCHS,
    DENSE_HEADS,
    DETECTION_HEADS,
    UNet,
    build_network,
    count_parameters,
)

__all__ = [
    "DEFAULT_ARCHS",
    "DENSE_HEADS",
    "DETECTION_HEADS",
    "UNet",
    "build_network",
    "count_parameters",
]
