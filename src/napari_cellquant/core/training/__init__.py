"""Training and fine-tuning learned models from Annotations.

Public API
----------
:class:`TrainingConfig`
    What to train (``base`` model name, card or weights), on what (``images`` as numpy arrays
    and their ``annotations``), where to write it (``output`` weights; the card goes beside
    it), and how (epochs, val_fraction, batch size, crop, lr, seed, device, resume, patience).
:func:`iter_train`
    A generator yielding a :class:`TrainingEvent` (phase, epoch, step, total steps, train
    loss, validation score, best score, base score, checkpoint) after every optimisation step
    and every validation; closing it at any yield stops the run and leaves the last good
    (atomically written) weights, card and resume checkpoint. Its return value
    (``StopIteration.value``, napari's ``returned``) is a :class:`TrainingResult`.
:func:`train`
    Runs :func:`iter_train` to the end with optional ``progress(event)`` and ``cancel()``
    callables and returns the :class:`TrainingResult`: weights and card paths, the base
    model's validation score next to the new one, and warnings (a new model that validates
    worse than its base is always reported).
:func:`load_training_pairs`
    ``(image, Annotation)`` pairs from an images folder and any annotation file or folder
    ``core.io.read_annotations`` reads (COCO, VOC, label images, colour maps, mask folders).

Example
-------
>>> pairs = load_training_pairs("images/", "coco.json")                    # doctest: +SKIP
>>> config = TrainingConfig(base="net-centernet", images=[p[0] for p in pairs],
...                         annotations=[p[1] for p in pairs], output="my_net.pt")  # doctest: +SKIP
>>> result = train(config, progress=print)                                 # doctest: +SKIP
>>> load_model(result.weights)                                             # doctest: +SKIP

Modules: :mod:`.datasets` (samples and targets), :mod:`.augment` (crops and jitter),
:mod:`.losses`, :mod:`.validation` (scores), :mod:`.loop` (the loop and checkpoints).
"""

from .datasets import TrainingSample, load_training_pairs, make_sample
from .loop import (
    TrainingConfig,
    TrainingEvent,
    TrainingResult,
    iter_train,
    output_paths,
    train,
)

__all__ = [
    "TrainingConfig",
    "TrainingEvent",
    "TrainingResult",
    "TrainingSample",
    "iter_train",
    "load_training_pairs",
    "make_sample",
    "output_paths",
    "train",
]
