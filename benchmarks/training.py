"""Training throughput of blood-unet: crops per second through ``core.training.iter_train``.

Trains blood-unet from scratch on synthetic 512 x 512 smears (batch 4, crop 256, augmentation
on) for a fixed number of steps on each device asked for, and prints crops (images) per second
of the optimisation steps (validation and checkpoints are left out of the timing).

Peer, measured in the same run on the same device: a bare PyTorch loop with the same network,
batch and optimiser (AdamW) on one pre-made batch, with cross-entropy on the class head and an
L1 loss on the distance head (AMP and channels-last on CUDA, as ``iter_train`` does). It is
what the step costs with no data preparation, so the ratio says how much the crops,
augmentation and loss bookkeeping of ``iter_train`` cost. Where both devices run, the CUDA
over CPU speed-up is printed too.

    python benchmarks/training.py [--devices cpu,cuda] [--steps 20] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, CROP, SIZE = 4, 256, 512


def smears(n: int = 4) -> tuple[list[np.ndarray], list]:
    from napari_cellquant.core.synthetic import synthetic_blood_smear

    pairs = [synthetic_blood_smear((SIZE, SIZE), seed=seed, rbc_radius=18) for seed in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ours(device: str, steps: int) -> float:
    """Crops per second of iter_train's optimisation steps."""
    from napari_cellquant.core.training import TrainingConfig, iter_train

    images, annotations = smears()
    with tempfile.TemporaryDirectory() as folder:
        config = TrainingConfig(
            base="blood-unet", images=images, annotations=annotations,
            output=Path(folder) / "bench.pt", epochs=1, val_fraction=0.0, batch_size=BATCH,
            crop=CROP, steps_per_epoch=steps + 2, device=device, from_scratch=True,
        )
        stamps = [time.perf_counter() for event in iter_train(config) if event.phase == "step"]
    timed = np.diff(stamps[2:])  # the first steps warm up kernels and allocators
    return BATCH / float(np.median(timed))


def bare(device: str, steps: int) -> float:
    """Crops per second of a bare PyTorch step on one pre-made batch (the peer)."""
    import torch
    import torch.nn.functional as F

    from napari_cellquant.core.models import DEFAULT_ARCHS, build_network

    torch.manual_seed(0)
    dev = torch.device(device)
    amp = dev.type == "cuda"
    net = build_network(dict(DEFAULT_ARCHS["blood-unet"])).to(dev).train()
    if amp:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    image = torch.randn(BATCH, 3, CROP, CROP, device=dev)
    if amp:
        image = image.to(memory_format=torch.channels_last)
    classes = torch.randint(0, net.head_channels["classes"], (BATCH, CROP, CROP), device=dev)
    distance = torch.rand(BATCH, 1, CROP, CROP, device=dev)
    stamps = []
    for _ in range(steps + 2):
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            out = net(image)
            loss = F.cross_entropy(out["classes"].float(), classes) + F.l1_loss(
                out["distance"].float(), distance)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        float(loss.detach())  # synchronises, as iter_train's loss report does
        stamps.append(time.perf_counter())
    return BATCH / float(np.median(np.diff(stamps[2:])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="cpu,cuda",
                        help="comma-separated; cuda is skipped where there is none")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, float] = {}
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{device}: no CUDA device here, skipped")
            continue
        label = torch.cuda.get_device_name(0) if device.startswith("cuda") else \
            f"CPU, {torch.get_num_threads()} threads"
        rate, peer = ours(device, args.steps), bare(device, args.steps)
        results[device] = rate
        print(f"{device} ({label}): iter_train {rate:.2f} crops/s; bare PyTorch step "
              f"{peer:.2f} crops/s; ratio {rate / peer:.2f} (batch {BATCH}, crop {CROP})")
    if "cpu" in results and any(d.startswith("cuda") for d in results):
        cuda = next(v for d, v in results.items() if d.startswith("cuda"))
        print(f"CUDA / CPU speed-up of iter_train: {cuda / results['cpu']:.1f}x")


if __name__ == "__main__":
    main()
