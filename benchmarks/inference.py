"""Tiled inference throughput and memory: napari-cellquant vs MONAI's sliding_window_inference.

Runs blood-unet (random weights, 1.9M parameters; ``--arch blood-detector`` for the
EfficientNet-Lite0 detector) on a 4032 x 3024 RGB image with tile 256,
overlap 0.25, Gaussian blending (sigma 0.125 * tile) and batch 4, through
``napari_cellquant.core.inference.predict_maps`` and through
``monai.inferers.sliding_window_inference`` with the same roi, overlap, mode and sw_batch_size,
and prints megapixels per second, their ratio, peak resident memory of each run (every
measurement runs in its own process so ``ru_maxrss`` is its own) and the largest difference
between the two outputs.

    python benchmarks/inference.py [--threads N] [--rounds 3] [--device cpu|cuda] [--huge]
                                   [--arch blood-unet|blood-detector] [--e2e]

``--e2e`` times ``cellquant predict`` end to end (a new process: start-up, reading, the
detector's own scale measurement, tiled inference, instances, writing COCO and counts) with
the bundled ``blood-detector`` on 4032 x 3024 mosaics of TXL-PBC val photographs at two
magnifications (RBCs of about 100 px, as photographed, and at the model's own scale, the
card's whole-cell diameter: all pixels through the network, the costliest case), with its
peak memory.

``--huge`` adds a 20000 x 20000 run (uint8 input memory-mapped from a temporary file, compact
outputs memory-mapped) to show that memory is bounded by the tile band; when the estimated
time of blood-unet there exceeds ``--huge-limit`` seconds (default 600), it uses a tiny network
(width 4, depth 2) instead and says so. Needs the optional ``benchmarks`` extra (monai).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = tuple(int(v) for v in os.environ.get("CELLQUANT_BENCH_SHAPE", "3024,4032").split(","))
# rows, columns: a 12-megapixel phone-camera smear (the variable is for a quick smoke run)
TILE, OVERLAP, BATCH, SIGMA = 256, 0.25, 4, 0.125
HUGE = 20000


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def make_network(arch_name: str = "blood-unet", tiny: bool = False):
    import torch

    from napari_cellquant.core.models import DEFAULT_ARCHS, build_network

    torch.manual_seed(0)
    arch = dict(DEFAULT_ARCHS[arch_name])
    if tiny:
        arch.update(width=4, depth=2)
    net = build_network(arch).eval()
    # trained-looking BatchNorm statistics, so that folding them is not a no-op
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def Unfused(net):  # a class factory: torch is imported lazily
    import torch

    class _Unfused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.in_channels = net.in_channels
            self.size_multiple = net.size_multiple
            self.output_strides = net.output_strides
            self.head_channels = net.head_channels

        def forward(self, x):
            return self.net(x)

    return _Unfused()


def make_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8).astype(np.float32) / 255


VARIANTS = ("ours", "monai", "ours-full", "monai-fused", "ours-nofuse")
LABELS = {
    "ours": "ours (compact outputs)",
    "monai": "MONAI sliding_window_inference",
    "ours-full": "ours (float32 outputs)",
    "monai-fused": "MONAI given our folded channels_last net (ablation)",
    "ours-nofuse": "ours, BN not folded (ablation)",
}


def make_runner(kind: str, net, device):
    """A function image -> outputs for one variant of the comparison."""
    import torch

    from napari_cellquant.core.inference import predict_maps

    if kind.startswith("ours"):
        # ablation: a wrapper hides fuse_for_inference, so BatchNorm stays a separate pass
        run_net = Unfused(net) if kind == "ours-nofuse" else net

        def run(img):
            return predict_maps(
                img,
                run_net,
                tile=TILE,
                overlap=OVERLAP,
                batch_size=BATCH,
                device=device,
                sigma_scale=SIGMA,
                compact=kind != "ours-full",
            )

        return run

    from monai.inferers import sliding_window_inference

    monai_net = net.to(device)
    if kind == "monai-fused":  # ablation: give MONAI our folded, channels_last network
        monai_net = net.fuse_for_inference().to(device, memory_format=torch.channels_last)

    from napari_cellquant.core.inference import _activate

    acts = net.output_activations

    def predictor(x):
        out = monai_net(x)
        return {k: _activate(v, acts[k]) for k, v in out.items()}

    def run(img):
        # a zero-copy (1, C, H, W) view, as MONAI wants channel-first input
        x = torch.from_numpy(img).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():  # MONAI's documented usage
            return sliding_window_inference(
                x,
                (TILE, TILE),
                BATCH,
                predictor,
                overlap=OVERLAP,
                mode="gaussian",
                sigma_scale=SIGMA,
            )

    return run


def timed(run, image, device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one run."""
    import torch

    w0, c0 = time.perf_counter(), time.process_time()
    out = run(image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    del out
    return wall, cpu


def child(args: argparse.Namespace) -> dict:
    """One measurement in a fresh process; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kind = args.child
    result: dict = {"kind": kind, "threads": torch.get_num_threads(), "device": str(device)}
    if kind == "huge":
        return child_huge(args, result)

    net = make_network(args.arch)
    image = make_image()
    megapixels = SHAPE[0] * SHAPE[1] / 1e6
    if kind == "timing":
        # All variants in one process, alternating round by round: on a machine shared with
        # other work, load then hits every variant alike; each keeps its best round.
        runners = {k: make_runner(k, net, device) for k in VARIANTS}
        for run in runners.values():  # warm-up: oneDNN builds its kernels on first use
            run(np.ascontiguousarray(image[:512, :512]))
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for k, run in runners.items():
                wall, cpu = timed(run, image, device)
                if k not in best or wall < best[k][0]:
                    best[k] = (wall, cpu)
        result["variants"] = {
            k: {"seconds": w, "cpu_seconds": c, "mp_per_s": megapixels / w}
            for k, (w, c) in best.items()
        }
        return result

    # a single variant alone in its process: its own peak resident memory
    result["rss_before_mb"] = peak_rss_mb()
    run = make_runner(kind, net, device)
    run(np.ascontiguousarray(image[:512, :512]))
    wall, cpu = timed(run, image, device)
    result.update(
        seconds=wall, cpu_seconds=cpu, mp_per_s=megapixels / wall, peak_rss_mb=peak_rss_mb()
    )
    return result


def child_huge(args: argparse.Namespace, result: dict) -> dict:
    import torch

    from napari_cellquant.core.inference import predict_maps

    tiny = args.tiny
    net = make_network(args.arch, tiny=tiny)
    tmp = Path(tempfile.mkdtemp(prefix="cellquant-bench-"))
    # the input lives on disk too: a 20000 x 20000 RGB float32 array alone would be 4.8 GB
    image = np.memmap(tmp / "input.u8", dtype=np.uint8, mode="w+", shape=(HUGE, HUGE, 3))
    rng = np.random.default_rng(0)
    for r in range(0, HUGE, 1000):
        image[r : r + 1000] = rng.integers(0, 256, (min(1000, HUGE - r), HUGE, 3), np.uint8)
        image.flush()
    del image
    image = np.memmap(tmp / "input.u8", dtype=np.uint8, mode="r", shape=(HUGE, HUGE, 3))
    result["rss_before_mb"] = peak_rss_mb()
    t0 = time.perf_counter()
    out = predict_maps(
        image,
        net,
        tile=TILE,
        overlap=OVERLAP,
        batch_size=BATCH,
        device=torch.device(args.device),
        normalize=lambda band: band.astype(np.float32) * np.float32(1 / 255),
        memmap_dir=str(tmp),
    )
    seconds = time.perf_counter() - t0
    result.update(
        tiny_network=tiny,
        seconds=seconds,
        mp_per_s=HUGE * HUGE / 1e6 / seconds,
        peak_rss_mb=peak_rss_mb(),
        outputs={k: [list(v.shape), str(v.dtype), type(v).__name__] for k, v in out.items()},
        output_gb=sum(v.nbytes for v in out.values()) / 1e9,
    )
    del out, image
    (tmp / "input.u8").unlink()
    tmp.rmdir()
    return result


def compare(args: argparse.Namespace) -> dict:
    """Largest output differences between ours and MONAI (in one process: float maps)."""
    import torch
    from monai.inferers import sliding_window_inference

    from napari_cellquant.core.inference import predict_maps

    torch.set_num_threads(args.threads)
    net = make_network(args.arch)
    image = make_image()
    device = torch.device(args.device)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    net = net.to(device)
    from napari_cellquant.core.inference import _activate

    acts = net.output_activations

    def predictor(t):
        return {k: _activate(v, acts[k]) for k, v in net(t).items()}

    with torch.no_grad():
        ref = sliding_window_inference(
            x,
            (TILE, TILE),
            BATCH,
            predictor,
            overlap=OVERLAP,
            mode="gaussian",
            sigma_scale=SIGMA,
        )
    ref = {k: v[0].cpu().numpy() for k, v in ref.items()}  # (C, H, W), as ours
    kw = dict(
        tile=TILE, overlap=OVERLAP, batch_size=BATCH, device=device, sigma_scale=SIGMA, amp=False
    )
    res: dict = {}
    border = 16  # MONAI's 2-D-clamped window differs from ours only in image-border strips
    for blend in ("monai", "gaussian"):
        ours = predict_maps(image, net, blend=blend, compact=False, **kw)
        res[blend] = {}
        for key, expected in ref.items():
            diff = np.abs(ours[key].reshape(expected.shape) - expected)
            edge = max(1, border // (image.shape[0] // expected.shape[-2]))
            res[blend][f"max_abs_diff_{key}"] = float(diff.max())
            res[blend][f"interior_max_abs_diff_{key}"] = float(
                diff[..., edge:-edge, edge:-edge].max()
            )
        del ours
    if "classes" in ref:
        compact = predict_maps(image, net, **kw)
        res["compact"] = {
            "argmax_agreement": float((compact["classes"] == ref["classes"].argmax(0)).mean()),
            "max_abs_diff_confidence_f16": float(
                np.abs(
                    compact["classes_confidence"].astype(np.float32) - ref["classes"].max(0)
                ).max()
            ),
        }
    return res


def spawn(args: argparse.Namespace, kind: str, *extra: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--threads",
        str(args.threads),
        "--rounds",
        str(args.rounds),
        "--device",
        args.device,
        "--arch",
        args.arch,
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{kind} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace) -> None:
    import torch

    from napari_cellquant.core.models import count_parameters

    mp = SHAPE[0] * SHAPE[1] / 1e6
    devices = (
        [args.device]
        if args.device != "auto"
        else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    )
    print(
        f"{args.arch}, {count_parameters(make_network(args.arch)):,} parameters, random weights; "
        f"{SHAPE[1]}x{SHAPE[0]} RGB ({mp:.1f} MP), tile {TILE}, overlap {OVERLAP}, "
        f"gaussian sigma {SIGMA}*tile, batch {BATCH}, {args.threads} threads"
    )
    ours_cpu = None
    for dev in devices:
        args.device = dev
        timing = spawn(args, "timing")["variants"]
        rss = {k: spawn(args, k) for k in ("ours", "ours-full", "monai")}
        print(f"\n[{dev}]  best of {args.rounds} interleaved rounds:  MP/s   wall s   CPU s")
        for k, r in timing.items():
            print(
                f"  {LABELS[k]:<52} {r['mp_per_s']:5.2f}  {r['seconds']:7.2f}  "
                f"{r['cpu_seconds']:7.2f}"
            )
        ratio = timing["ours"]["mp_per_s"] / timing["monai"]["mp_per_s"]
        print(
            f"  ratio ours/MONAI: {ratio:.2f}  (float32 outputs: "
            f"{timing['ours-full']['mp_per_s'] / timing['monai']['mp_per_s']:.2f}; "
            f"MONAI given our network prep: "
            f"{timing['ours']['mp_per_s'] / timing['monai-fused']['mp_per_s']:.2f})"
        )
        print("  peak RSS, one run per process (MB; before the run):")
        for k, r in rss.items():
            print(
                f"    {LABELS[k]:<50} {r['peak_rss_mb']:6.0f} ({r['rss_before_mb']:.0f})"
                f"   [{r['mp_per_s']:.2f} MP/s alone]"
            )
        if dev == "cpu":
            ours_cpu = timing["ours"]
        diff = spawn(args, "compare")
        print("  output differences vs MONAI (probabilities of 10 classes, distance):")
        for k, v in diff.items():
            print(f"    {k}: " + ", ".join(f"{a}={b:.3g}" for a, b in v.items()))
        sys.stdout.flush()

    if args.huge:
        args.device = devices[0]
        base = ours_cpu if args.device == "cpu" and ours_cpu else timing["ours"]
        estimate = base["seconds"] * HUGE * HUGE / (SHAPE[0] * SHAPE[1])
        tiny = estimate > args.huge_limit
        print(
            f"\n[huge] {HUGE}x{HUGE}: blood-unet estimated {estimate:.0f} s on {args.device}"
            + (
                f" > {args.huge_limit:.0f} s: using a tiny network (width 4, depth 2) to "
                "measure memory boundedness"
                if tiny
                else ""
            )
        )
        r = spawn(args, "huge", *(["--tiny"] if tiny else []))
        print(
            f"  {'tiny' if tiny else 'blood-unet'}: {r['seconds']:.0f} s, "
            f"{r['mp_per_s']:.2f} MP/s, peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(before run {r['rss_before_mb']:.0f} MB); compact outputs "
            f"{r['output_gb']:.2f} GB memory-mapped: {r['outputs']}"
        )
        print(
            f"  MONAI would hold (C+1)*H*W*4 = {12 * HUGE * HUGE * 4 / 1e9:.1f} GB of "
            "float32 sums plus a 4.8 GB float32 input"
        )


def smear_mosaic(rbc_px: float) -> np.ndarray:
    """A 4032 x 3024 smear made of TXL-PBC val's 640 x 480 (BCCD) photographs, resized so
    that their RBCs (about 97 px as photographed) are ``rbc_px`` wide, tiled edge to edge."""
    from skimage.transform import rescale

    from napari_cellquant.core.io.images import image_shape, read_image

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "txl_pbc" / "images" / "val"
    photos = [p for p in sorted(folder.glob("*.jpg")) if image_shape(p) == (480, 640)]
    if not photos:
        raise SystemExit(f"--e2e needs the TXL-PBC val photographs in {folder}")
    mosaic = np.zeros((*SHAPE, 3), dtype=np.uint8)
    zoom = rbc_px / 97.0
    k = 0
    y = 0
    while y < SHAPE[0]:
        x = 0
        while x < SHAPE[1]:
            tile = read_image(photos[k % len(photos)])[..., :3]
            if zoom != 1:
                tile = (
                    np.rint(
                        rescale(
                            tile.astype(np.float32),
                            zoom,
                            channel_axis=-1,
                            preserve_range=True,
                            anti_aliasing=zoom < 1,
                        )
                    )
                    .clip(0, 255)
                    .astype(np.uint8)
                )
            h, w = min(tile.shape[0], SHAPE[0] - y), min(tile.shape[1], SHAPE[1] - x)
            mosaic[y : y + h, x : x + w] = tile[:h, :w]
            x += tile.shape[1]
            k += 1
        y += tile.shape[0]
    return mosaic


def end_to_end(args: argparse.Namespace) -> None:
    """``cellquant predict`` with the bundled blood-detector on 4032 x 3024 mosaics."""
    from skimage.io import imsave

    cli = Path(sys.executable).with_name("cellquant")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(
        f"cellquant predict -m blood-detector, {SHAPE[1]}x{SHAPE[0]} smear mosaics, "
        f"{args.threads} threads, one process per run (wall s, peak RSS MB)"
    )
    from napari_cellquant.core.models.registry import get_card

    model_scale = float(get_card("blood-detector").typical_diameter or 40.0)
    with tempfile.TemporaryDirectory() as tmp:
        for rbc_px in (97.0, model_scale):
            image = Path(tmp) / f"smear-rbc{int(rbc_px)}.png"
            imsave(image, smear_mosaic(rbc_px), check_contrast=False)
            out = Path(tmp) / f"out{int(rbc_px)}"
            started = time.perf_counter()
            proc = subprocess.Popen(
                [
                    str(cli),
                    "predict",
                    str(image),
                    "-m",
                    "blood-detector",
                    "-o",
                    str(out),
                    "--device",
                    args.device if args.device != "auto" else "cpu",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            stderr = proc.stderr.read() if proc.stderr else ""
            if status:
                sys.stderr.write(stderr)
                raise SystemExit("cellquant predict failed")
            counts = (out / "counts.csv").read_text(encoding="utf-8").strip().splitlines()
            peak = usage.ru_maxrss / 2**10
            print(
                f"  RBCs of {rbc_px:.0f} px: {wall:5.1f} s, peak RSS {peak:5.0f} MB; "
                f"{' '.join(line for line in stderr.splitlines() if 'diameter' in line)}; "
                f"counts: {counts[-1]}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--device", default="auto")
    p.add_argument("--huge", action="store_true")
    p.add_argument("--huge-limit", type=float, default=600.0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", default="blood-unet", choices=["blood-unet", "blood-detector"])
    p.add_argument("--e2e", action="store_true", help="time cellquant predict end to end")
    args = p.parse_args()
    if args.e2e:
        end_to_end(args)
        return
    if args.child:
        if args.device == "auto":
            args.device = "cpu"
        out = compare(args) if args.child == "compare" else child(args)
        print(json.dumps(out))
        return
    report(args)


if __name__ == "__main__":
    main()
