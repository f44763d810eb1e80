"""Pure-Python core: numpy, scikit-image, torch and the standard library; no Qt, no napari."""
