"""GTA5 and Cityscapes readers of the segmentation task on tiny fake folders in exactly
their layouts: the official id -> train-id table, ignore pixels, resizing, pairing of
images and labels by name, and the checks that name a missing folder or label file before
any job (settings) or when a file is read.
"""

from __future__ import annotations

import numpy as np
import pytest

from tarot_select import TarotInputError

pytest.importorskip("cityscapesscripts")
Image = pytest.importorskip("PIL.Image")

from cityscapesscripts.helpers.labels import labels as OFFICIAL

from tarot_select.tasks.segmentation import readers
from tarot_select.tasks.segmentation.labels import IGNORE, id_to_train_id, train_id_names
from tarot_select.tasks.segmentation.settings import SegmentationSettings

H, W = 8, 16  # size of the fake files
CITIES = {"train": ["aachen", "bremen"], "val": ["frankfurt"]}


def _palette_png(path, ids: np.ndarray) -> None:
    """A palette ("P") PNG whose pixel *indices* are ``ids`` (GTA5's label format); the palette
    colours are unrelated to the ids, so reading colours instead of indices would fail."""
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    rng = np.random.default_rng(1)
    img.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tolist())
    img.save(path)


def _rgb_png(path, value: int) -> None:
    Image.fromarray(np.full((H, W, 3), value % 256, dtype=np.uint8)).save(path)


def _ids_for(k: int) -> np.ndarray:
    """Label ids of fake image ``k``: left half road (7), right half car (26), first row
    unlabeled (0), the last column id 8 + k % 2 (sidewalk 8 or parking 9, an ignored class)."""
    ids = np.full((H, W), 7)
    ids[:, W // 2 :] = 26
    ids[0] = 0
    ids[:, -1] = 8 + k % 2
    return ids


def make_gta5(root, n: int = 5, skip_label: int | None = None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in reversed(range(n)):  # created in reverse: listing must sort by name
        name = f"{k + 1:05d}.png"
        _rgb_png(root / "images" / name, 10 * k)
        if k != skip_label:
            _palette_png(root / "labels" / name, _ids_for(k))
    return root


def make_cityscapes(root, per_city: int = 2, skip: str | None = None):
    k = 0
    for split, cities in CITIES.items():
        for city in cities:
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for j in range(per_city):
                stem = f"{city}_{j:06d}_000019"
                _rgb_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 10 * k)
                Image.fromarray(_ids_for(k).astype(np.uint8), mode="L").save(
                    root / "gtFine" / split / city / f"{stem}_gtFine_color.png"
                )  # a file that must not be taken for the labels
                if stem != skip:
                    Image.fromarray(_ids_for(k).astype(np.uint8), mode="L").save(
                        root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
                    )
                k += 1
    return root


# --------------------------------------------------------------------------- the table


def test_lookup_table_is_the_official_one():
    lut = id_to_train_id()
    assert lut.shape == (256,) and lut.dtype == np.uint8 and not lut.flags.writeable
    for label in OFFICIAL:
        if 0 <= label.id < 256:
            expected = label.trainId if not label.ignoreInEval and 0 <= label.trainId < 255 else IGNORE
            assert lut[label.id] == expected, label
    assert sorted(set(lut.tolist()) - {IGNORE}) == list(range(19))
    assert (lut[34:] == IGNORE).all()  # not a label id: ignored
    assert lut[7] == 0 and lut[26] == 13 and lut[0] == IGNORE and lut[8] == 1
    assert train_id_names()[0] == "road" and train_id_names()[13] == "car" and len(train_id_names()) == 19


# --------------------------------------------------------------------------- reading


def test_read_pair_maps_ids_to_train_ids_and_keeps_ignore(tmp_path):
    root = make_gta5(tmp_path / "gta5", n=2)
    img, lab = readers.read_pair(root / "images" / "00002.png", root / "labels" / "00002.png", (H, W))
    assert img.shape == (3, H, W) and img.dtype == np.uint8 and (img == 10).all()
    assert lab.shape == (H, W) and lab.dtype == np.uint8
    assert (lab[0] == IGNORE).all()  # unlabeled (id 0)
    assert (lab[1:, : W // 2] == 0).all()  # road (id 7)
    assert (lab[1:, W // 2 : -1] == 13).all()  # car (id 26)
    assert (lab[1:, -1] == IGNORE).all()  # image 2 (k = 1): parking (id 9), not evaluated


def test_resize_is_nearest_for_labels_and_bilinear_for_images(tmp_path):
    ids = np.full((40, 80), 7, dtype=np.uint8)
    ids[:, 40:] = 26
    ids[:20, :] = 23  # sky
    Image.fromarray(ids, mode="L").save(tmp_path / "lab.png")
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 40:] = 200
    Image.fromarray(pixels).save(tmp_path / "img.png")
    img, lab = readers.read_pair(tmp_path / "img.png", tmp_path / "lab.png", (4, 8))
    assert set(np.unique(lab).tolist()) == {0, 10, 13}  # no blended ids: nearest neighbour
    assert (lab[:2] == 10).all() and (lab[2:, :4] == 0).all() and (lab[2:, 4:] == 13).all()
    assert (img[:, :, 0] == 0).all() and (img[:, :, -1] == 200).all()
    assert img.shape == (3, 4, 8)
    img, _ = readers.read_pair(tmp_path / "img.png", tmp_path / "lab.png", (4, 7))  # the edge now falls mid-pixel
    assert 0 < img[0, 0, 3] < 200  # bilinear: a blend at the edge


def test_a_colour_label_image_is_refused(tmp_path):
    _rgb_png(tmp_path / "img.png", 5)
    _rgb_png(tmp_path / "lab.png", 7)
    with pytest.raises(TarotInputError, match=r"lab\.png: label image of mode RGB"):
        readers.read_pair(tmp_path / "img.png", tmp_path / "lab.png", (H, W))


def test_an_undecodable_file_is_named(tmp_path):
    (tmp_path / "img.png").write_bytes(b"not a png")
    _palette_png(tmp_path / "lab.png", _ids_for(0))
    with pytest.raises(TarotInputError, match=r"img\.png .*cannot be read"):
        readers.read_pair(tmp_path / "img.png", tmp_path / "lab.png", (H, W))


# --------------------------------------------------------------------------- listing and pairing


def test_gta5_pairs_images_and_labels_by_name(tmp_path):
    root = make_gta5(tmp_path / "gta5", n=5)
    pairs = readers.list_gta5(root)
    assert [p[0].name for p in pairs] == [f"{k:05d}.png" for k in range(1, 6)]
    assert all(i.name == lab.name and i.parent.name == "images" and lab.parent.name == "labels" for i, lab in pairs)
    for k, (i, lab) in enumerate(pairs):
        img, y = readers.read_pair(i, lab, (H, W))
        assert (img == 10 * k).all()  # image k ...
        assert (y[1:, -1] == (1 if k % 2 == 0 else IGNORE)).all()  # ... with label k


def test_cityscapes_pairs_by_stem_city_by_city(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    train = readers.list_cityscapes(root, "train")
    val = readers.list_cityscapes(root, "val")
    assert len(train) == 4 and len(val) == 2
    for img, lab in train + val:
        assert img.name.endswith("_leftImg8bit.png") and lab.name.endswith("_gtFine_labelIds.png")
        assert img.name.replace("_leftImg8bit.png", "") == lab.name.replace("_gtFine_labelIds.png", "")
        assert img.parent.name == lab.parent.name  # same city
    assert [p[0].parent.name for p in train] == ["aachen", "aachen", "bremen", "bremen"]
    with pytest.raises(TarotInputError, match="unknown Cityscapes split"):
        readers.list_cityscapes(root, "test")


def test_a_missing_gta5_label_file_is_named(tmp_path):
    root = make_gta5(tmp_path / "gta5", n=4, skip_label=2)
    with pytest.raises(TarotInputError, match=r"labels: no label file for 1 image\(s\): .*labels/00003\.png"):
        readers.list_gta5(root)


def test_a_missing_cityscapes_label_file_is_named(tmp_path):
    root = make_cityscapes(tmp_path / "cs", skip="bremen_000001_000019")
    with pytest.raises(TarotInputError, match=r"gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds\.png"):
        readers.list_cityscapes(root, "train")
    assert len(readers.list_cityscapes(root, "val")) == 2  # the other split is fine


@pytest.mark.parametrize(
    "remove,message",
    [
        ("gta5/labels", r"gta5/labels: GTA5 labels folder not found"),
        ("gta5", r"gta5: GTA5 root folder not found"),
        ("cs/gtFine/val", r"cs/gtFine/val: Cityscapes val labels folder not found"),
        ("cs/leftImg8bit", r"cs/leftImg8bit/train: Cityscapes train images folder not found"),
    ],
)
def test_settings_check_the_folders_before_any_job(tmp_path, remove, message):
    import shutil

    gta, cs = make_gta5(tmp_path / "gta5"), make_cityscapes(tmp_path / "cs")
    shutil.rmtree(tmp_path / remove)
    block = {"dataset": "gta5_cityscapes", "gta5_root": str(gta), "cityscapes_root": str(cs)}
    key = "gta5_root" if remove.startswith("gta5") else "cityscapes_root"
    with pytest.raises(TarotInputError, match=rf"tasks\.seg\.{key}: .*{message}"):
        SegmentationSettings.from_config(block, "tasks.seg")


def test_settings_of_the_real_dataset(tmp_path):
    gta, cs = make_gta5(tmp_path / "gta5", n=5), make_cityscapes(tmp_path / "cs")
    block = {"dataset": "gta5_cityscapes", "gta5_root": str(gta), "cityscapes_root": str(cs)}
    with pytest.raises(TarotInputError, match=r"tasks\.seg\.cityscapes_root: required"):
        SegmentationSettings.from_config({**block, "cityscapes_root": None}, "tasks.seg")
    s = SegmentationSettings.from_config({**block, "n_targets": None, "n_evaluation": None}, "tasks.seg")
    assert s.split_sizes() == {"candidates": 5, "targets": 4, "evaluation": 2}
    s = SegmentationSettings.from_config({**block, "n_candidates": 3, "n_targets": 2, "n_evaluation": 1}, "tasks.seg")
    assert s.split_sizes() == {"candidates": 3, "targets": 2, "evaluation": 1}
    with pytest.raises(TarotInputError, match=r"tasks\.seg\.n_targets: 5 exceeds the 4 Cityscapes train images"):
        SegmentationSettings.from_config({**block, "n_targets": 5}, "tasks.seg")
    with pytest.raises(TarotInputError, match=r"tasks\.seg\.dataset: synthetic ignores gta5_root"):
        SegmentationSettings.from_config({"gta5_root": str(gta)}, "tasks.seg")


def test_prepare_and_load_the_real_dataset(tmp_path):
    """prepare resizes every pair once into uint8 arrays; load memory-maps them (no torchvision needed)."""
    import torch

    from tarot_select.tasks import RunContext, get_task

    gta, cs = make_gta5(tmp_path / "gta5", n=5), make_cityscapes(tmp_path / "cs")
    block = {
        "kind": "segmentation",
        "dataset": "gta5_cityscapes",
        "gta5_root": str(gta),
        "cityscapes_root": str(cs),
        "n_candidates": 3,
        "n_targets": None,
        "n_evaluation": None,
        "image_size": [8, 12],
    }
    task = get_task("segmentation", block, seed=1, context=RunContext(threads=2))
    task.prepare(tmp_path / "data")
    data = task.load(tmp_path / "data")
    assert (len(data.candidates), len(data.targets), len(data.evaluation)) == (3, 4, 2)
    assert task.options.split_sizes() == {"candidates": 3, "targets": 4, "evaluation": 2}
    assert list(data.sources) == ["gta5"] * 3 and data.target_groups is None
    x, y = data.candidates[0]
    assert x.shape == (3, 8, 12) and x.dtype == torch.uint8 and y.shape == (8, 12) and y.dtype == torch.int64
    assert set(np.unique(y.numpy()).tolist()) <= {0, 1, 13, IGNORE}
    # the same seed samples the same GTA5 images; pairs stay paired (image value encodes its label)
    again = get_task("segmentation", block, seed=1)
    again.prepare(tmp_path / "again")
    assert np.array_equal(again.load(tmp_path / "again").candidates.images, data.candidates.images)
    for img, lab in zip(data.candidates.images, data.candidates.labels):
        k = int(img[0, 0, 0]) // 10
        assert (lab[1:, -1] == (1 if k % 2 == 0 else IGNORE)).all()
