"""Cityscapes label ids and train ids (torch-free).

The 19 evaluated classes of Cityscapes are its *train ids* ``0..18``; every other pixel is
:data:`IGNORE` (255). GTA5's label PNGs and Cityscapes' ``*_gtFine_labelIds.png`` hold
*label ids* (``0..33``); :func:`id_to_train_id` is the lookup table that maps them, built
from the official table of ``cityscapesscripts.helpers.labels`` (the ``labels`` list of
``Label(name, id, trainId, category, categoryId, hasInstances, ignoreInEval, color)``),
never from a hand-copied one: a label id maps to its ``trainId`` when the label is
evaluated (``ignoreInEval`` false, ``0 <= trainId < 255``), to 255 otherwise, and every
value that is not a label id of the table (e.g. 34..254 in a damaged file) maps to 255.

Only the number of classes and the ignore value are constants of this module, so that the
settings (which run in the Snakemake process) need neither torch nor cityscapesscripts.
"""

from __future__ import annotations

import functools
from typing import Final

import numpy as np

__all__ = ["IGNORE", "N_CLASSES", "id_to_train_id", "train_id_names"]

#: Number of Cityscapes train ids (the classes of mIoU).
N_CLASSES: Final[int] = 19
#: Label of pixels that are not evaluated (and carry no loss).
IGNORE: Final[int] = 255


def _official_labels() -> list:
    """The ``labels`` list of ``cityscapesscripts.helpers.labels``, or ImportError with the fix."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the segmentation task maps Cityscapes label ids with the official table of cityscapesscripts: "
            "pip install cityscapesscripts"
        ) from exc
    return list(labels)


@functools.lru_cache(maxsize=1)
def id_to_train_id() -> np.ndarray:
    """Lookup table ``lut`` of shape ``(256,)``, uint8: ``train_id = lut[label_id]``.

    Built from the official Cityscapes table (see the module docstring); read-only.
    Checks that the table yields exactly the train ids ``0..18``, each once.
    """
    lut = np.full(256, IGNORE, dtype=np.uint8)
    seen: list[int] = []
    for label in _official_labels():
        if 0 <= label.id < 256 and not label.ignoreInEval and 0 <= label.trainId < IGNORE:
            lut[label.id] = label.trainId
            seen.append(int(label.trainId))
    if sorted(seen) != list(range(N_CLASSES)):
        raise RuntimeError(f"cityscapesscripts' label table gives train ids {sorted(seen)}, expected 0..18 once each")
    lut.flags.writeable = False
    return lut


@functools.lru_cache(maxsize=1)
def train_id_names() -> tuple[str, ...]:
    """Names of the train ids ``0..18`` from the official table (``road``, ``sidewalk``, ...)."""
    names = {int(lb.trainId): lb.name for lb in _official_labels() if not lb.ignoreInEval and 0 <= lb.trainId < IGNORE}
    return tuple(names[i] for i in range(N_CLASSES))
