"""The U-Net family: shapes of every head at odd sizes, parameter counts, options, errors."""

from __future__ import annotations

import json

import pytest
import torch

from napari_cellquant.core.errors import InputError
from napari_cellquant.core.models import (
    DEFAULT_ARCHS,
    DENSE_HEADS,
    DETECTION_HEADS,
    build_network,
    count_parameters,
)

TINY = {"width": 4, "depth": 2}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _run(net: torch.nn.Module, h: int, w: int, c: int = 3) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return net.eval()(torch.rand(2, c, h, w))


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("blood-unet", 1.8e6, 2.0e6), ("fluo-resunet", 3.0e5, 7.0e5), ("net-centernet", 1.5e6, 2.5e6)],
)
def test_default_archs_parameter_counts(name: str, low: float, high: float) -> None:
    net = build_network(DEFAULT_ARCHS[name])
    assert low <= count_parameters(net) <= high


def test_blood_unet_is_the_documented_size() -> None:
    # width 16, depth 4: 16-32-64-128 encoder and a 256 bridge, ~1.9M parameters
    net = build_network(DEFAULT_ARCHS["blood-unet"])
    assert net.arch["widths"] == [16, 32, 64, 128] and net.arch["bridge"] == 256
    assert net.head_channels == {"classes": 10, "distance": 1}
    assert count_parameters(net) == 1_942_747


def test_count_parameters_trainable_only() -> None:
    net = build_network({**TINY, "heads": ["classes"]})
    total = count_parameters(net)
    net.heads["classes"].requires_grad_(False)
    frozen = sum(p.numel() for p in net.heads["classes"].parameters())
    assert count_parameters(net, trainable_only=True) == total - frozen


@pytest.mark.parametrize(("h", "w"), [(37, 50), (1, 1), (64, 64), (33, 97)])
def test_every_head_has_the_right_shape_at_odd_sizes(h: int, w: int) -> None:
    arch = {
        **TINY,
        "n_classes": 5,
        "heads": list(DENSE_HEADS),
        "detector": {"n_classes": 3, "stride": 4},
    }
    out = _run(build_network(arch), h, w)
    assert set(out) == set(DENSE_HEADS) | set(DETECTION_HEADS)
    assert out["classes"].shape == (2, 6, h, w)
    assert out["distance"].shape == (2, 1, h, w)
    assert out["boundary"].shape == (2, 1, h, w)
    hs, ws = -(-h // 4), -(-w // 4)
    assert out["heatmap"].shape == (2, 3, hs, ws)
    assert out["size"].shape == (2, 2, hs, ws)
    assert out["offset"].shape == (2, 2, hs, ws)


def test_default_archs_run_at_an_odd_size() -> None:
    for name, arch in DEFAULT_ARCHS.items():
        net = build_network(arch)
        out = _run(net, 45, 38)
        for head, tensor in out.items():
            s = net.output_strides[head]
            assert tensor.shape == (2, net.head_channels[head], -(-45 // s), -(-38 // s)), name


@pytest.mark.parametrize(
    "options",
    [
        {"residual": True},
        {"norm": "group", "groups": 3},  # 4 channels: groups fall back to a divisor
        {"norm": "none"},
        {"activation": "leaky_relu"},
        {"activation": "elu", "residual": True},
        {"upsample": "bilinear"},
        {"stem_channels": 1, "residual": True},
        {"widths": [3, 5, 7], "bridge": 9},
    ],
)
def test_options_build_and_run(options: dict) -> None:
    net = build_network({**TINY, "n_classes": 2, "heads": ["classes", "distance"], **options})
    out = _run(net, 21, 30)
    assert out["classes"].shape == (2, 3, 21, 30)
    assert torch.isfinite(out["classes"]).all()


def test_options_change_the_network() -> None:
    base = build_network({**TINY, "heads": ["classes"]})
    assert isinstance(base.stem, torch.nn.Identity)
    stem = build_network({**TINY, "heads": ["classes"], "stem_channels": 1})
    assert stem.stem.weight.shape == (1, 3, 1, 1)
    res = build_network({**TINY, "heads": ["classes"], "residual": True})
    assert count_parameters(res) > count_parameters(base)  # projected shortcuts
    assert not any(
        isinstance(m, torch.nn.BatchNorm2d)
        for m in build_network({**TINY, "heads": ["classes"], "norm": "none"}).modules()
    )
    assert any(
        isinstance(m, torch.nn.ELU)
        for m in build_network({**TINY, "heads": ["classes"], "activation": "elu"}).modules()
    )


def test_one_channel_input() -> None:
    net = build_network({**TINY, "in_channels": 1, "heads": ["boundary"]})
    assert net.in_channels == 1
    assert _run(net, 17, 19, c=1)["boundary"].shape == (2, 1, 17, 19)


def test_detector_only_network_stops_the_decoder_at_its_stride() -> None:
    det = build_network({**TINY, "heads": [], "detector": {"n_classes": 4, "stride": 2}})
    assert len(det.decoder) == 1  # depth 2 -> decoder back to stride 2 only
    out = _run(det, 30, 22)
    assert set(out) == set(DETECTION_HEADS)
    assert out["heatmap"].shape == (2, 4, 15, 11)
    # at stride 2**depth the head sits on the bridge, no decoder at all
    bridge = build_network({**TINY, "heads": [], "detector": {"n_classes": 1, "stride": 4}})
    assert len(bridge.decoder) == 0
    assert _run(bridge, 16, 16)["size"].shape == (2, 2, 4, 4)


def test_output_activations_follow_the_heads() -> None:
    seg = build_network(DEFAULT_ARCHS["blood-unet"])
    assert seg.output_activations == {"classes": "softmax", "distance": "identity"}
    det = build_network(DEFAULT_ARCHS["net-centernet"])
    assert det.output_activations == {"heatmap": "sigmoid", "size": "exp", "offset": "identity"}
    direct = build_network(
        {**TINY, "heads": ["boundary"], "detector": {"stride": 4, "size_encoding": "direct"}}
    )
    assert direct.output_activations["size"] == "identity"
    assert direct.output_activations["boundary"] == "sigmoid"


def test_heatmap_starts_at_the_centernet_prior() -> None:
    net = build_network(DEFAULT_ARCHS["net-centernet"])
    bias = net.heads["heatmap"].out.bias
    assert torch.allclose(torch.sigmoid(bias), torch.full_like(bias, 0.1))


def test_arch_round_trips_through_json() -> None:
    for arch in DEFAULT_ARCHS.values():
        net = build_network(arch)
        again = build_network(json.loads(json.dumps(net.arch)))
        assert again.arch == net.arch
        shapes = {k: v.shape for k, v in net.state_dict().items()}
        assert shapes == {k: v.shape for k, v in again.state_dict().items()}
        again.load_state_dict(net.state_dict())


def test_fuse_for_inference_keeps_outputs_and_the_original() -> None:
    net = build_network({**TINY, "residual": True, "n_classes": 3, "heads": ["classes"]})
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    fused = net.fuse_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(2, 3, 24, 40)
    with torch.inference_mode():
        expected = net.eval()(x)["classes"]
        got = fused(x)["classes"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({"colour": 3}, "unknown key"),
        ({"type": "segformer"}, "unknown type"),
        ({"norm": "layer"}, "norm must be"),
        ({"activation": "gelu"}, "activation must be"),
        ({"upsample": "nearest"}, "upsample must be"),
        ({"width": 0}, "width must be a positive integer"),
        ({"depth": 2.5}, "depth must be a positive integer"),
        ({"widths": []}, "widths must be a non-empty list"),
        ({"heads": "classes"}, "heads must be a list"),
        ({"heads": ["mask"]}, "unknown head"),
        ({"heads": []}, "no heads"),
        ({"depth": 2, "detector": {"stride": 8}}, "power of two <= 2\\*\\*depth"),
        ({"detector": {"stride": 3}}, "power of two"),
        ({"detector": {"size_encoding": "sqrt"}}, "size_encoding"),
        ({"detector": {"anchors": 3}}, "unknown detector key"),
        ({"detector": [4]}, "detector must be a dict"),
    ],
)
def test_bad_architectures_are_input_errors(arch: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_network(arch)


def test_arch_must_be_a_dict() -> None:
    with pytest.raises(InputError, match="expected a dict"):
        build_network("blood-unet")  # type: ignore[arg-type]
