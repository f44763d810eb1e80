"""Trained weights shipped with the package (``<name>.pt``) and their model cards (``<name>.json``).

Written by ``scripts/train_bundled.py``; each card's ``metrics`` holds held-out figures
(cross-validation or leave-one-image-out). A package so that the files install with it.
"""
