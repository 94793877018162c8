"""Readers of GTA5 and Cityscapes in their own folder layouts (never downloaded).

Layouts
-------
GTA5 (Richter et al. 2016, as distributed)::

    <gta5_root>/images/00001.png ...     RGB frames (1914×1052)
    <gta5_root>/labels/00001.png ...     Cityscapes *label ids*, one byte per pixel (palette PNG)

An image and its label share the file name.

Cityscapes (Cordts et al. 2016, ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)::

    <cityscapes_root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <cityscapes_root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The label of ``<stem>_leftImg8bit.png`` is ``<stem>_gtFine_labelIds.png`` in the same city
folder of ``gtFine`` (the other ``gtFine`` files, colour, instance ids, polygons, are not read).

Listing (:func:`list_gta5`, :func:`list_cityscapes`) only looks at names, so the settings
check it in the Snakemake process (no torch, no image decoding): a missing folder, a folder
without images, or an image without its label file raises
:class:`~tarot_select.errors.TarotInputError` naming the path. Reading
(:func:`read_pair`, needs Pillow) decodes one pair, maps label ids to train ids with the
official table (:func:`~.labels.id_to_train_id`) and resizes the image bilinearly (Pillow's
antialiased ``BILINEAR``) and the labels by nearest neighbour to the configured size.
Label files must hold ids (mode ``L``, ``P`` or 16-bit ``I;16``/``I``: the pixel values,
never palette colours); a colour (RGB) label image is refused.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Final

import numpy as np

from ...errors import TarotInputError
from .labels import IGNORE, id_to_train_id

__all__ = [
    "CITYSCAPES_IMAGE_SUFFIX",
    "CITYSCAPES_LABEL_SUFFIX",
    "CITYSCAPES_SPLITS",
    "Pair",
    "list_cityscapes",
    "list_gta5",
    "read_pair",
]

logger = logging.getLogger(__name__)

CITYSCAPES_IMAGE_SUFFIX: Final[str] = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX: Final[str] = "_gtFine_labelIds.png"
CITYSCAPES_SPLITS: Final[tuple[str, ...]] = ("train", "val")
_MAX_NAMED: Final[int] = 3

#: ``(image file, label file)``.
Pair = tuple[Path, Path]


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise TarotInputError(f"{path}: {what} folder not found")
    return path


def _missing(names: list[str], where: Path) -> str:
    shown = ", ".join(names[:_MAX_NAMED]) + (f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")
    return f"{where}: no label file for {len(names)} image(s): {shown}"


@functools.lru_cache(maxsize=8)
def _gta5(root: str) -> tuple[Pair, ...]:
    base = _folder(Path(root), "GTA5 root")
    images = _folder(base / "images", "GTA5 images")
    labels = _folder(base / "labels", "GTA5 labels")
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not names:
        raise TarotInputError(f"{images}: no .png images (expected GTA5's images/00001.png ...)")
    have = {p.name for p in labels.iterdir() if p.is_file()}
    missing = [n for n in names if n not in have]
    if missing:
        raise TarotInputError(_missing([str(labels / n) for n in missing], labels))
    return tuple((images / n, labels / n) for n in names)


def list_gta5(root: str | Path) -> list[Pair]:
    """``(image, label)`` pairs of a GTA5 folder, sorted by file name.

    Raises
    ------
    TarotInputError
        Naming the path: ``root``, ``root/images`` or ``root/labels`` is missing,
        ``images`` holds no ``.png``, or an image has no label of the same name.
    """
    return list(_gta5(str(root)))


@functools.lru_cache(maxsize=8)
def _cityscapes(root: str, split: str) -> tuple[Pair, ...]:
    base = _folder(Path(root), "Cityscapes root")
    images = _folder(base / "leftImg8bit" / split, f"Cityscapes {split} images")
    labels = _folder(base / "gtFine" / split, f"Cityscapes {split} labels")
    pairs: list[Pair] = []
    missing: list[str] = []
    for city in sorted(p for p in images.iterdir() if p.is_dir()):
        for img in sorted(city.glob(f"*{CITYSCAPES_IMAGE_SUFFIX}")):
            stem = img.name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
            lab = labels / city.name / f"{stem}{CITYSCAPES_LABEL_SUFFIX}"
            if lab.is_file():
                pairs.append((img, lab))
            else:
                missing.append(str(lab))
    if missing:
        raise TarotInputError(_missing(missing, labels))
    if not pairs:
        raise TarotInputError(
            f"{images}: no <city>/*{CITYSCAPES_IMAGE_SUFFIX} images (expected Cityscapes' leftImg8bit/{split}/<city>/)"
        )
    return tuple(pairs)


def list_cityscapes(root: str | Path, split: str) -> list[Pair]:
    """``(image, label)`` pairs of Cityscapes split ``split`` (``train`` or ``val``), sorted by
    city and file name; labels are the ``*_gtFine_labelIds.png`` files.

    Raises
    ------
    TarotInputError
        Naming the path: a folder of the layout is missing, the split holds no image, or an
        image has no label file.
    """
    if split not in CITYSCAPES_SPLITS:
        raise TarotInputError(f"unknown Cityscapes split {split!r}; one of {', '.join(CITYSCAPES_SPLITS)}")
    return list(_cityscapes(str(root), split))


def _image_module():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading GTA5 / Cityscapes needs Pillow: pip install pillow") from exc
    return Image


def read_pair(image_path: str | Path, label_path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image and its labels, as train ids, resized to ``size``.

    Parameters
    ----------
    image_path, label_path : path
        An RGB image and its label-id image (see the module docstring).
    size : (int, int)
        ``(height, width)`` of the output.

    Returns
    -------
    image : np.ndarray, shape (3, H, W), uint8
        Bilinear (antialiased) resize.
    labels : np.ndarray, shape (H, W), uint8
        Train ids ``0..18`` and 255 (ignore): label ids resized by nearest neighbour, then
        mapped by the official table.

    Raises
    ------
    TarotInputError
        Naming the file, if it cannot be decoded or the label image is not an id image.
    """
    image_mod = _image_module()
    h, w = int(size[0]), int(size[1])
    try:
        with image_mod.open(image_path) as im:
            image_size = im.size
            img = np.asarray(im.convert("RGB").resize((w, h), image_mod.BILINEAR), dtype=np.uint8)
        with image_mod.open(label_path) as lb:
            if lb.mode not in ("L", "P", "I", "I;16"):
                raise TarotInputError(
                    f"{label_path}: label image of mode {lb.mode}; expected label ids (one channel, mode L, P or I;16)"
                )
            if lb.size != image_size:
                logger.warning("%s: label size %s differs from its image's %s", label_path, lb.size, image_size)
            ids = np.asarray(lb.resize((w, h), image_mod.NEAREST)).astype(np.int64)
    except TarotInputError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise TarotInputError(f"{image_path} / {label_path}: cannot be read as images ({detail})") from None
    lut = id_to_train_id()
    labels = np.full(ids.shape, IGNORE, dtype=np.uint8)
    known = (ids >= 0) & (ids < lut.size)
    labels[known] = lut[ids[known]]
    return np.ascontiguousarray(img.transpose(2, 0, 1)), labels
