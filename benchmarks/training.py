"""Training throughput: crops per second through ``core.training.iter_train``.

Trains ``--model`` (blood-unet: batch 4, crop 256; blood-detector: batch 8, crop 192, from
ImageNet features, the bundled recipe) on synthetic 512 x 512 smears (augmentation on) for a
fixed number of steps on each device asked for, and prints crops (images) per second of the
optimisation steps (validation and checkpoints are left out of the timing). It also times
the data side alone (``make_batch``: crops, augmentation and targets of one batch, on the
CPU in the training process) against the step, which shows whether data is the bottleneck.

Peer, measured in the same run on the same device: a bare PyTorch loop with the same network,
batch and optimiser (AdamW) on one pre-made batch, with cross-entropy on the class head and an
L1 loss on the distance head (AMP and channels-last on CUDA, as ``iter_train`` does). It is
what the step costs with no data preparation, so the ratio says how much the crops,
augmentation and loss bookkeeping of ``iter_train`` cost. Where both devices run, the CUDA
over CPU speed-up is printed too.

    python benchmarks/training.py [--devices cpu,cuda] [--steps 20] [--threads N]
                                  [--model blood-unet|blood-detector]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 512
#: batch and crop of each model's bundled recipe
RECIPES = {"blood-unet": (4, 256), "blood-detector": (8, 192)}
MODEL = "blood-unet"
BATCH, CROP = RECIPES[MODEL]


def smears(n: int = 4) -> tuple[list[np.ndarray], list]:
    from napari_cellquant.core.classes import BLOOD3
    from napari_cellquant.core.synthetic import synthetic_blood_smear

    pairs = [synthetic_blood_smear((SIZE, SIZE), seed=seed, rbc_radius=18) for seed in range(n)]
    if MODEL == "blood-detector":  # a detector learns boxes of blood3
        return [p[0] for p in pairs], [p[1].mapped_to(BLOOD3) for p in pairs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ours(device: str, steps: int) -> float:
    """Crops per second of iter_train's optimisation steps."""
    from napari_cellquant.core.training import TrainingConfig, iter_train

    images, annotations = smears()
    with tempfile.TemporaryDirectory() as folder:
        config = TrainingConfig(
            base=MODEL,
            images=images,
            annotations=annotations,
            output=Path(folder) / "bench.pt",
            epochs=1,
            val_fraction=0.0,
            batch_size=BATCH,
            crop=CROP,
            steps_per_epoch=steps + 2,
            device=device,
            from_scratch=MODEL != "blood-detector",
        )
        stamps = [time.perf_counter() for event in iter_train(config) if event.phase == "step"]
    timed = np.diff(stamps[2:])  # the first steps warm up kernels and allocators
    return BATCH / float(np.median(timed))


def bare(device: str, steps: int) -> float:
    """Crops per second of a bare PyTorch step on one pre-made batch (the peer)."""
    import torch
    import torch.nn.functional as F

    from napari_cellquant.core.models import DEFAULT_ARCHS, build_network
    from napari_cellquant.core.training.losses import detection_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    amp = dev.type == "cuda"
    net = build_network(dict(DEFAULT_ARCHS[MODEL])).to(dev).train()
    batch = data_batch()
    detector = net.arch["detector"]
    if amp:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    image = torch.randn(BATCH, 3, CROP, CROP, device=dev)
    if amp:
        image = image.to(memory_format=torch.channels_last)
    targets = {k: v.to(dev) for k, v in batch.items()}
    stamps = []
    for _ in range(steps + 2):
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            out = net(image)
            if detector:
                loss, _ = detection_loss(out, targets, size_encoding=detector["size_encoding"])
            else:
                loss = F.cross_entropy(
                    out["classes"].float(), targets["classes"].clamp(min=0)
                ) + F.l1_loss(out["distance"].float(), targets["distance"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        float(loss.detach())  # synchronises, as iter_train's loss report does
        stamps.append(time.perf_counter())
    return BATCH / float(np.median(np.diff(stamps[2:])))


def data_batch(timed: int = 0) -> dict:
    """One training batch as ``iter_train`` makes it; with ``timed`` > 0, the median seconds
    of that many batches instead."""
    from napari_cellquant.core.models.registry import get_card
    from napari_cellquant.core.training import make_sample
    from napari_cellquant.core.training.augment import AugmentSettings, make_batch

    card = get_card(MODEL)
    images, annotations = smears()
    samples = [make_sample(i, a, card) for i, a in zip(images, annotations)]
    settings = AugmentSettings(crop=CROP)
    rng = np.random.default_rng(0)
    detector = card.architecture.get("detector")
    if not timed:
        return make_batch(samples, BATCH, settings, rng, detector=detector)
    seconds = []
    for _ in range(timed):
        started = time.perf_counter()
        make_batch(samples, BATCH, settings, rng, detector=detector)
        seconds.append(time.perf_counter() - started)
    return {"seconds": float(np.median(seconds))}


def main() -> None:
    global MODEL, BATCH, CROP
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--devices", default="cpu,cuda", help="comma-separated; cuda is skipped where there is none"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", default="blood-unet", choices=list(RECIPES))
    args = parser.parse_args()
    import torch

    MODEL = args.model
    BATCH, CROP = RECIPES[MODEL]
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, float] = {}
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{device}: no CUDA device here, skipped")
            continue
        label = (
            torch.cuda.get_device_name(0)
            if device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} threads"
        )
        rate, peer = ours(device, args.steps), bare(device, args.steps)
        results[device] = rate
        print(
            f"{MODEL} on {device} ({label}): iter_train {rate:.2f} crops/s; bare PyTorch step "
            f"{peer:.2f} crops/s; ratio {rate / peer:.2f} (batch {BATCH}, crop {CROP})"
        )
        data = data_batch(timed=10)["seconds"]
        print(
            f"  data side (make_batch, one batch): {1e3 * data:.0f} ms = "
            f"{100 * data / (BATCH / rate):.0f}% of a step of iter_train"
        )
    if "cpu" in results and any(d.startswith("cuda") for d in results):
        cuda = next(v for d, v in results.items() if d.startswith("cuda"))
        print(f"CUDA / CPU speed-up of iter_train: {cuda / results['cpu']:.1f}x")


if __name__ == "__main__":
    main()
