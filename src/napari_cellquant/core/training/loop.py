"""The training loop: configuration, progress events, checkpoints, resume and the result."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..annotation import Annotation
from ..errors import CancelledError, InputError, OutputExistsError
from ..models.card import ModelCard, WeightsSource

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cellquant-training-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainingConfig:
    """What to train, on what, and how.

    Attributes
    ----------
    base
        The model to start from: a registry name (``blood-unet``), a card ``.json`` or a
        weights file with its card beside it. Its weights, when it has any, are fine-tuned;
        its architecture, class set and normalisation are kept.
    images, annotations
        The training data: images as numpy arrays (grey, RGB or channel-last) and one
        :class:`~napari_cellquant.core.annotation.Annotation` per image (from
        ``core.io.read_annotations`` or napari layers via ``_layers.layer_data_to_annotation``).
        Classes are mapped onto the base model's class set by name.
    output
        Weights file to write (``.pt``); the card goes beside it (``.json``) and the resume
        checkpoint too (``<stem>.resume.pt``).
    epochs
        Total number of epochs (a resumed run continues up to this count).
    val_fraction
        Share of the images held out for validation (at least one when there are two or more;
        with one image, validation runs on the training image and the result says so).
    val_indices
        Explicit held-out images (indices into ``annotations``); overrides ``val_fraction``.
    batch_size, crop
        Crops per step and their edge in pixels (rounded up to what the network needs).
    lr, weight_decay
        AdamW settings; the learning rate follows a cosine decay over ``epochs``.
    seed
        Seeds the weights of a new network, the split, the crops and the augmentation.
    device
        ``"auto"`` (cuda, mps, cpu) or a torch device string.
    resume
        Continue from ``<stem>.resume.pt`` (weights, optimiser, epoch count, best score).
    patience
        Stop after this many epochs without a better validation score (None: never).
    steps_per_epoch
        Optimisation steps per epoch; default: as many crops as cover the training pixels once.
    from_scratch
        Ignore the base model's weights and start from random ones.
    from_imagenet
        Ignore the base model's weights and start from the ImageNet-pretrained encoder where
        the network has one (random elsewhere): a fresh recipe, as the bundled models are
        trained, so retraining a bundled model never starts from its own weights (which saw
        every image, the held-out ones of a cross-validation too).
    augment
        Flips, turns, scale and colour jitter on (True) or plain crops (False).
    scale_range
        Zoom range of the scale jitter.
    balance_classes
        Centre crops on the classes equally often, not on each object equally often (see
        :class:`~.augment.AugmentSettings`): for rare classes among many common ones.
    ema_decay
        Keep an exponential moving average of the weights, updated after every step with this
        decay (ramped in over the first steps, see :func:`ramped_ema`); validation, the best
        weights and the card are the average's. None: the weights as trained.
    contact_weight
        Weigh the distance head's error ``1 + contact_weight`` times near borders that two
        objects share (:func:`~.losses.contact_zone`), so touching cells are learnt apart;
        0: every pixel alike.
    stand_in_channels
        Probability that a crop's channels after the first are replaced by its first, so the
        network learns to work without them: a missing second stain is given as the first
        one repeated (``core.normalization.prepare_image``), as ``net-area`` takes the DNA
        stain alone or with the histone stain. 0: every crop as it is.
    name
        Name written into the new card (default: the output file's stem).
    overwrite
        Replace an existing output (weights and card).
    """

    base: str | os.PathLike[str]
    images: Sequence[np.ndarray]
    annotations: Sequence[Annotation]
    output: str | os.PathLike[str]
    epochs: int = 50
    val_fraction: float = 0.2
    val_indices: Sequence[int] | None = None
    batch_size: int = 4
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    patience: int | None = 15
    steps_per_epoch: int | None = None
    from_scratch: bool = False
    from_imagenet: bool = False
    augment: bool = True
    scale_range: tuple[float, float] = (0.8, 1.25)
    balance_classes: bool = False
    ema_decay: float | None = None
    contact_weight: float = 0.0
    stand_in_channels: float = 0.0
    name: str | None = None
    overwrite: bool = False


@dataclass
class TrainingEvent:
    """One progress report of :func:`iter_train`.

    ``phase`` is ``"start"`` (before the first step, with the base model's score), ``"step"``
    (after each optimisation step, with its ``loss``) or ``"epoch"`` (after validation, with
    ``val_score``). ``checkpoint`` is the best weights file written so far (None before the
    first). Steps count from the start of the first run, so a resumed run goes on counting.
    """

    phase: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None = None
    val_score: float | None = None
    best_score: float | None = None
    base_score: float | None = None
    checkpoint: Path | None = None
    #: training crops per second since this run started, and the seconds left at that rate
    crops_per_s: float | None = None
    eta_s: float | None = None

    def describe(self) -> str:
        """One progress line: epoch, step, loss or score, throughput and time left."""
        parts = [f"epoch {self.epoch}/{self.epochs}", f"step {self.step}/{self.total_steps}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_score is not None:
            parts.append(f"val {self.val_score:.4f}")
        if self.best_score is not None:
            parts.append(f"best {self.best_score:.4f}")
        if self.crops_per_s:
            parts.append(f"{self.crops_per_s:.1f} crops/s")
        if self.eta_s is not None:
            minutes, seconds = divmod(int(round(self.eta_s)), 60)
            parts.append(f"ETA {minutes}:{seconds:02d}")
        return ", ".join(parts)


@dataclass
class TrainingResult:
    """What a training run produced.

    Attributes
    ----------
    weights, card
        The best weights and their model card (None if no epoch finished).
    checkpoint
        The resume checkpoint (``<stem>.resume.pt``).
    score_name
        ``mean_iou`` (dense models) or ``f1@0.5`` (detectors).
    base_score, score
        Validation score of the base model (None when it had no weights) and of the best
        new weights.
    best_epoch, epochs_run
        Epoch of the best weights; last epoch that finished.
    stopped_early, cancelled
        Early stopping fired; the run was cancelled (the files hold the last good state).
    validation_images
        Names of the held-out images; ``validated_on_training_data`` when there were none.
    history
        Per epoch: ``epoch``, ``loss`` (mean training loss) and ``val_score``.
    warnings
        Messages a person must see, e.g. the new model validates worse than its base.
    seconds
        Wall time of this run.
    """

    weights: Path | None
    card: Path | None
    checkpoint: Path | None
    score_name: str
    base_score: float | None
    score: float | None
    best_epoch: int
    epochs_run: int
    stopped_early: bool = False
    cancelled: bool = False
    validation_images: list[str] = field(default_factory=list)
    validated_on_training_data: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


ProgressCallback = Callable[[TrainingEvent], None]
CancelCallback = Callable[[], bool]


def output_paths(output: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Weights, card and resume-checkpoint paths for an output weights path."""
    weights = Path(output)
    if weights.suffix.lower() == ".json":
        raise InputError(
            "the output names the weights file (.pt); the card is written beside it", source=weights
        )
    if weights.suffix.lower() != ".pt":
        weights = weights.with_name(weights.name + ".pt")
    return weights, weights.with_suffix(".json"), weights.with_name(weights.stem + ".resume.pt")


def iter_train(config: TrainingConfig) -> Generator[TrainingEvent, None, TrainingResult]:
    """Train or fine-tune a model, yielding a :class:`TrainingEvent` after every step.

    Closing the generator at a yield (napari ``thread_worker.quit()``, or
    :func:`train`'s ``cancel``) stops at once; the best weights, their card and the resume
    checkpoint on disk are those of the last finished epoch, written atomically.

    Returns
    -------
    TrainingResult
        As ``StopIteration.value`` (napari's ``returned`` signal).

    Raises
    ------
    InputError
        Bad data or settings, classes that do not map onto the base model's class set, a
        resume checkpoint of another class set, an existing output without ``overwrite``.
    WeightsError
        Base weights or the resume checkpoint are corrupt or do not fit the network.
    """
    run = _Run(config)
    return (yield from run.steps())


def train(
    config: TrainingConfig,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> TrainingResult:
    """Run :func:`iter_train` to the end (scripts and the CLI).

    ``progress(event)`` is called for every event; when ``cancel()`` returns True the run
    stops within one step and the result (``cancelled=True``) names the last good files.
    """
    from ..drive import drive

    run = _Run(config)
    try:
        return drive(run.steps(), progress, cancel, what="training")
    except CancelledError:
        return run.result(cancelled=True)


class _Run:
    """State of one training run (so :func:`train` can report after a cancel)."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.weights_path, self.card_path, self.checkpoint_path = output_paths(config.output)
        self.best_score: float | None = None
        self.base_score: float | None = None
        self.best_epoch = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.saved = False
        self.stopped_early = False
        self.started = time.perf_counter()
        self.val_names: list[str] = []
        self.val_is_train = False
        self.score_name = ""
        self._clock = (time.perf_counter(), 0)  # (time, step) throughput counts from

    # --- set-up -------------------------------------------------------------------------
    def _check(self) -> None:
        c = self.config
        if len(c.images) != len(c.annotations):
            raise InputError(f"{len(c.images)} images but {len(c.annotations)} annotations")
        if not c.annotations:
            raise InputError("no training data: give at least one annotated image")
        for key in ("epochs", "batch_size", "crop"):
            value = getattr(c, key)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{key} must be a positive integer, got {value!r}")
        if c.lr <= 0:
            raise InputError(f"lr must be positive, got {c.lr}")
        if c.ema_decay is not None and not 0 < c.ema_decay < 1:
            raise InputError(f"ema_decay must be between 0 and 1, got {c.ema_decay}")
        if not c.contact_weight >= 0:
            raise InputError(f"contact_weight must be 0 or more, got {c.contact_weight}")
        if not 0 <= c.stand_in_channels <= 1:
            raise InputError(
                f"stand_in_channels must be between 0 and 1, got {c.stand_in_channels}"
            )
        if not c.resume and not c.overwrite:
            for path in (self.weights_path, self.card_path):
                if path.exists():
                    raise OutputExistsError(path)

    def _setup(self) -> None:
        import torch

        from ..inference import choose_device
        from ..models.networks import build_network
        from ..models.registry import get_card, weights_status
        from .augment import BRIGHTFIELD, FLUORESCENCE, AugmentSettings
        from .datasets import make_sample, split_samples
        from .losses import class_weights
        from .validation import score_name

        c = self.config
        self._check()
        card = get_card(c.base)
        if card.kind != "learned":
            raise InputError(
                f"{card.name} is a classical pipeline: pick a learned model "
                "(blood-detector, fluo-resunet, net-area, net-centernet, ...) or a trained card"
            )
        if card.task == "classify":
            raise InputError(
                f"{card.name} classifies crops of cells, not whole images: it is trained by "
                "scripts/wbc_types.py (core.training.classify), not from annotated images"
            )
        self.base_card = card
        self.score_name = score_name(card)
        samples = [make_sample(img, ann, card) for img, ann in zip(c.images, c.annotations)]
        if c.val_indices is not None:
            val = sorted({int(i) for i in c.val_indices})
            if any(not 0 <= i < len(samples) for i in val):
                raise InputError(f"val_indices {val} outside 0..{len(samples) - 1}")
            train_idx = [i for i in range(len(samples)) if i not in val] or val
            val = val or train_idx
        else:
            train_idx, val = split_samples(len(samples), c.val_fraction, c.seed)
        self.train_samples = [samples[i] for i in train_idx]
        self.val_samples = [samples[i] for i in val]
        self.val_names = [s.name for s in self.val_samples]
        self.val_is_train = set(val) <= set(train_idx)
        if self.val_is_train:
            log.warning("no held-out image: validation runs on the training images")
        self.train_names = [s.name for s in self.train_samples]

        torch.manual_seed(c.seed)
        self.device = choose_device(c.device)
        network = build_network(card.architecture)
        self.detector = network.arch["detector"]
        multiple = network.size_multiple
        if self.detector:
            multiple = math.lcm(multiple, int(self.detector["stride"]))
        self.crop = -(-c.crop // multiple) * multiple
        self.fine_tuned = False
        self.pretrained: str | None = None
        fresh = c.resume or c.from_scratch or c.from_imagenet
        if not fresh and weights_status(card) not in ("missing",):
            from ..models.registry import resolve_weights

            _load_into(network, _read_checkpoint(resolve_weights(card)), card.name)
            self.fine_tuned = True
        elif (
            not c.resume
            and not c.from_scratch
            and callable(load_encoder := getattr(network, "load_pretrained_encoder", None))
        ):
            load_encoder()  # ImageNet features (the training extra)
            self.pretrained = "imagenet"
        self.network = network.to(self.device)
        self.amp = self.device.type == "cuda"
        if self.amp:
            self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=c.lr, weight_decay=c.weight_decay
        )
        floor = 0.05
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda e: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(e / c.epochs, 1))),
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = None
        if c.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(
                self.network, multi_avg_fn=ramped_ema(c.ema_decay), use_buffers=True
            )
        self.weights = class_weights(self.train_samples, len(card.classes) + 1)
        pixels = sum(s.shape[0] * s.shape[1] for s in self.train_samples)
        self.steps_per_epoch = c.steps_per_epoch or max(
            1, math.ceil(pixels / (self.crop**2 * c.batch_size))
        )
        modality = BRIGHTFIELD if card.normalization.get("mode") == "meanstd" else FLUORESCENCE
        self.augment = AugmentSettings(
            crop=self.crop,
            scale_range=(float(c.scale_range[0]), float(c.scale_range[1])),
            balance_classes=c.balance_classes,
            stand_in_channels=c.stand_in_channels,
            modality=modality,
            enabled=c.augment,
        )
        self.start_epoch = 1
        self.since_best = 0
        if c.resume:
            self._resume()

    def _resume(self) -> None:
        state = _read_checkpoint(self.checkpoint_path, resume=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            from ..models.registry import WeightsError

            raise WeightsError(f"{self.checkpoint_path}: not a cellquant training checkpoint")
        if state.get("class_set") != self.base_card.class_set:
            raise InputError(
                f"checkpoint is for class set "
                f"{state.get('class_set')!r}, the model {self.base_card.name!r} "
                f"uses {self.base_card.class_set!r}",
                source=self.checkpoint_path,
            )
        _load_into(self.network, state["model"], str(self.checkpoint_path))
        if (self.ema is None) != (state.get("ema") is None):
            how = "with" if self.ema is None else "without"
            raise InputError(
                f"the checkpoint was trained {how} ema_decay: resume it {how}",
                source=self.checkpoint_path,
            )
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.epoch = int(state["epoch"])
        self.best_score = state.get("best_score")
        self.best_epoch = int(state.get("best_epoch", 0))
        self.base_score = state.get("base_score")
        self.since_best = int(state.get("since_best", 0))
        self.history = list(state.get("history", []))
        self.fine_tuned = bool(state.get("fine_tuned", False))
        self.pretrained = state.get("pretrained")
        self.saved = self.weights_path.is_file()
        log.info("resuming %s after epoch %d", self.checkpoint_path, self.epoch)

    # --- the loop -----------------------------------------------------------------------
    def steps(self) -> Generator[TrainingEvent, None, TrainingResult]:
        import torch

        from .augment import make_batch
        from .losses import dense_loss, detection_loss
        from .validation import validation_score

        self._setup()
        c = self.config
        total = c.epochs * self.steps_per_epoch
        step = (self.start_epoch - 1) * self.steps_per_epoch
        if self.fine_tuned and self.base_score is None:
            self.base_score = validation_score(
                self.kept, self.base_card, self.val_samples, self.device
            )
        yield self._event("start", step, total)
        for epoch in range(self.start_epoch, c.epochs + 1):
            self.epoch = epoch
            rng = np.random.default_rng([c.seed, epoch])
            self.network.train()
            losses = []
            for _ in range(self.steps_per_epoch):
                batch = make_batch(
                    self.train_samples, c.batch_size, self.augment, rng, detector=self.detector
                )
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                image = batch["image"]
                if self.amp:
                    image = image.to(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    outputs = self.network(image)
                if self.detector:
                    loss, _ = detection_loss(
                        outputs, batch, size_encoding=self.detector["size_encoding"]
                    )
                else:
                    loss, _ = dense_loss(
                        outputs, batch, self.weights, contact_weight=c.contact_weight
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update_parameters(self.network)
                losses.append(float(loss.detach()))
                step += 1
                yield self._event("step", step, total, loss=losses[-1])
            self.scheduler.step()
            score = validation_score(self.kept, self.base_card, self.val_samples, self.device)
            self.history.append(
                {"epoch": epoch, "loss": float(np.mean(losses)), "val_score": score}
            )
            if self.best_score is None or score > self.best_score + 1e-6:
                self.best_score, self.best_epoch, self.since_best = score, epoch, 0
                self._save_weights()
            else:
                self.since_best += 1
            self._save_checkpoint()
            yield self._event("epoch", step, total, val_score=score)
            if c.patience is not None and self.since_best >= c.patience:
                self.stopped_early = True
                log.info("early stop after epoch %d (best %d)", epoch, self.best_epoch)
                break
        return self.result()

    def _event(self, phase: str, step: int, total: int, **values: Any) -> TrainingEvent:
        if phase == "start":  # throughput counts from here (a resumed run from its resume)
            self._clock = (time.perf_counter(), step)
        started, first_step = self._clock
        elapsed, done = time.perf_counter() - started, step - first_step
        rate = eta = None
        if done > 0 and elapsed > 0:
            rate = done * self.config.batch_size / elapsed
            eta = (total - step) * elapsed / done
        return TrainingEvent(
            phase=phase,
            epoch=self.epoch,
            epochs=self.config.epochs,
            step=step,
            total_steps=total,
            best_score=self.best_score,
            base_score=self.base_score,
            checkpoint=self.weights_path if self.saved else None,
            crops_per_s=rate,
            eta_s=eta,
            **values,
        )

    @property
    def kept(self) -> Any:
        """The network that is validated and saved: the moving average, if there is one."""
        return self.network if self.ema is None else self.ema.module

    # --- files --------------------------------------------------------------------------
    def _save_weights(self) -> None:
        import torch

        from ..io.atomic import atomic_path

        state = {k: v.detach().cpu() for k, v in self.kept.state_dict().items()}
        with atomic_path(self.weights_path, overwrite=True) as tmp:
            torch.save(state, tmp)
        self._card().save(self.card_path, overwrite=True)
        self.saved = True

    def _save_checkpoint(self) -> None:
        import torch

        from ..io.atomic import atomic_path

        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "base_score": self.base_score,
            "since_best": self.since_best,
            "history": self.history,
            "class_set": self.base_card.class_set,
            "fine_tuned": self.fine_tuned,
            "pretrained": self.pretrained,
        }
        with atomic_path(self.checkpoint_path, overwrite=True) as tmp:
            torch.save(state, tmp)

    def _card(self) -> ModelCard:
        import pooch

        c = self.config
        base = self.base_card
        card = ModelCard.from_dict(base.to_dict())
        card.name = c.name or self.weights_path.stem
        # the base's prior shift was calibrated for the base's weights, not for these
        card.params.pop("class_logit_bias", None)
        how = (
            "fine-tuned from"
            if self.fine_tuned
            else "trained from ImageNet features as"
            if self.pretrained
            else "trained from scratch as"
        )
        card.description = f"{base.description} ({how} {base.name})"
        card.weights = WeightsSource(
            file=self.weights_path.name,
            sha256=pooch.file_hash(str(self.weights_path), alg="sha256"),
        )
        card.training = {
            "base": base.name,
            "fine_tuned": self.fine_tuned,
            "pretrained": self.pretrained,
            "images": self.train_names,
            "validation_images": self.val_names,
            "validated_on_training_data": self.val_is_train,
            "objects": _object_counts(self.config.annotations, base),
            "settings": {
                "epochs": c.epochs,
                "best_epoch": self.best_epoch,
                "batch_size": c.batch_size,
                "crop": self.crop,
                "lr": c.lr,
                "weight_decay": c.weight_decay,
                "steps_per_epoch": self.steps_per_epoch,
                "seed": c.seed,
                "augment": c.augment,
                "scale_range": list(c.scale_range),
                "balance_classes": c.balance_classes,
                "ema_decay": c.ema_decay,
                "contact_weight": c.contact_weight,
                "stand_in_channels": c.stand_in_channels,
                "device": str(self.device),
                "amp": self.amp,
            },
        }
        card.metrics = {
            "validation": {
                "score": self.score_name,
                "new": self.best_score,
                "base": self.base_score,
                "epoch": self.best_epoch,
            }
        }
        return card

    def result(self, *, cancelled: bool = False) -> TrainingResult:
        warnings = []
        if self.val_is_train:
            warnings.append("no held-out image: the validation score is measured on training data")
        if (
            self.base_score is not None
            and self.best_score is not None
            and self.best_score < self.base_score
        ):
            message = (
                f"the new model validates worse than its base {self.base_card.name}: "
                f"{self.score_name} {self.best_score:.3f} < {self.base_score:.3f}; "
                "keep the base model or add more corrected images"
            )
            log.warning(message)
            warnings.append(message)
        return TrainingResult(
            weights=self.weights_path if self.saved else None,
            card=self.card_path if self.saved else None,
            checkpoint=self.checkpoint_path if self.checkpoint_path.is_file() else None,
            score_name=self.score_name,
            base_score=self.base_score,
            score=self.best_score,
            best_epoch=self.best_epoch,
            epochs_run=self.epoch,
            stopped_early=self.stopped_early,
            cancelled=cancelled,
            validation_images=self.val_names,
            validated_on_training_data=self.val_is_train,
            history=list(self.history),
            warnings=warnings,
            seconds=time.perf_counter() - self.started,
        )


def ramped_ema(decay: float, ramp_steps: float = 500.0) -> Callable[..., None]:
    """``AveragedModel``'s ``multi_avg_fn`` for an exponential moving average whose decay
    grows as ``decay * (1 - exp(-n / ramp_steps))`` over the first updates (as Ultralytics'
    ModelEMA does), so the average is not held back by the starting weights; torch's own
    ``get_ema_multi_avg_fn`` has a fixed decay."""
    import torch

    @torch.no_grad()
    def update(averaged: list[Any], current: list[Any], updates: Any) -> None:
        d = decay * (1.0 - math.exp(-float(updates) / ramp_steps))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's batch count): the current value
            torch._foreach_copy_(averaged, current)

    return update


def _object_counts(annotations: Sequence[Annotation], card: ModelCard) -> dict[str, int]:
    totals: dict[str, int] = {}
    for annotation in annotations:
        for name, n in annotation.counts().items():
            totals[name] = totals.get(name, 0) + n
    return {k: v for k, v in totals.items() if v}


def _read_checkpoint(path: str | os.PathLike[str], *, resume: bool = False) -> dict[str, Any]:
    """A weights file or training checkpoint read with ``weights_only=True``."""
    import torch

    from ..models.registry import WeightsError

    p = Path(path)
    if not p.is_file():
        if resume:
            raise InputError(
                "no checkpoint to resume from (train without --resume first)", source=p
            )
        raise WeightsError(f"{p}: weights file does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise WeightsError(
            f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"{p}: holds no state dict")
    return state


def _load_into(network: Any, state: dict[str, Any], source: str) -> None:
    """Load a state dict (or a checkpoint holding one) into ``network``; WeightsError if it
    does not fit (another architecture or class set)."""
    from ..models.registry import WeightsError

    weights = state.get("state_dict", state.get("model", state))
    try:
        network.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise WeightsError(
            f"{source}: weights do not fit the network (another architecture "
            f"or class set?): {' '.join(first[:3])[:300]}"
        ) from None
