"""napari sample data: a real NET fluorescence image with its boxes, a real smear photograph
with its boxes, and a synthetic smear."""

from __future__ import annotations

from pathlib import Path

from ._layers import LayerDataTuple, annotation_to_layer_data

SAMPLES_DIR = Path(__file__).parent / "samples"
NET_IMAGE = SAMPLES_DIR / "K.Fiok3_1Per2h006_scale.jpg"
NET_BOXES = SAMPLES_DIR / "net_fluorescence.json"


def net_fluorescence() -> list[LayerDataTuple]:
    """NET fluorescence micrograph (MIT, krzysztoffiok 2019) and its expert boxes.

    Returns the image layer and a Shapes layer with 16 boxes in the ``net4`` classes (NET,
    dead, unstimulated, decondensed), in the 1024 x 768 JPEG's own pixel grid. (The
    original COCO file declares 1920 x 1440, but its boxes are already in the JPEG's grid:
    they reach its edges and frame the stained cells; the shipped JSON states the true size.)
    """
    from .core.classes import NET4
    from .core.io.coco import read_coco
    from .core.io.images import read_image

    (annotation,) = read_coco(NET_BOXES, images_dir=SAMPLES_DIR, class_set=NET4)
    return annotation_to_layer_data(annotation, image=read_image(NET_IMAGE))


def blood_smear_photo() -> list[LayerDataTuple]:
    """A Giemsa-stained smear photograph from BCCD (MIT, shenggan 2017) and its VOC boxes.

    BCCD boxed 19 of its red cells, its one white cell and no platelet; some red cells at
    the border are not boxed. ``blood-detector`` never trained on this photograph.
    """
    from .core.classes import BLOOD3
    from .core.io.images import read_image
    from .core.io.voc import read_voc

    (annotation,) = read_voc(
        SAMPLES_DIR / "BloodImage_00000.xml", images_dir=SAMPLES_DIR, class_set=BLOOD3
    )
    return annotation_to_layer_data(annotation, image=read_image(annotation.image_path))


def synthetic_blood_smear() -> list[LayerDataTuple]:
    """A synthetic Giemsa-stained blood smear (512 x 512) with its exact instance truth."""
    from .core.synthetic import synthetic_blood_smear as make_smear

    image, annotation = make_smear(shape=(512, 512), seed=0)
    return annotation_to_layer_data(annotation, image=image)
