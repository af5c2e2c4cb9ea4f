"""Your own images, laid out as `root/<class>/<image>` (torchvision's ImageFolder)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from src.data.splits import seeded_split
from src.utils.config import class_folder_names, is_presplit
from src.utils.errors import UserError

log = logging.getLogger(__name__)


class ImageFolderSplit(Dataset):
    """The train or test images of a folder of class folders.

    With `root/train/` and `root/test/` sub-folders those are the splits; otherwise
    the images of `root/<class>/` are split by `test_split` with `split_seed` (the
    validation split is carved out of the train images later). Images that cannot be
    read are skipped with a warning that counts them, or fail the run when
    `skip_unreadable` is false. Samples are (PIL image, class index): class `i` is
    `classes[i]`, by default the sorted class folders of the training images (so a
    test/ folder that lacks a class keeps the indices of train/), and `classes` (a
    trained model's) maps a new folder the same way. With `num_classes`, another
    number of classes is refused.
    """

    def __init__(
        self,
        root: str,
        train: bool = True,
        test_split: float = 0.2,
        split_seed: int = 0,
        skip_unreadable: bool = True,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import IMG_EXTENSIONS

        base = Path(root)
        if not base.is_dir():
            raise UserError(f"data.root={root!r} is not a folder: expected {root}/<class>/<image> (or train/ and test/ inside).")
        presplit = is_presplit(base)
        folder = base / ("train" if train else "test") if presplit else base
        found = class_folder_names(folder)
        if not found:
            raise UserError(f"{folder} has no class folders: expected {folder}/<class>/<image>.")
        training_folder = base / "train" if presplit else base
        classes = list(classes) if classes else class_folder_names(training_folder)
        if num_classes is not None and len(classes) != num_classes:
            raise UserError(
                f"{training_folder} has {len(classes)} class folders ({', '.join(classes)}), but data.num_classes={num_classes}: "
                f"the model has one output per class folder, in the folders' sorted order. Leave data.num_classes out "
                f"(it is counted from the folders), or set data.num_classes={len(classes)}."
            )
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise UserError(
                f"{folder} has class folder(s) {', '.join(unknown)} that are not among the {len(classes)} classes "
                f"({', '.join(classes)}) of the training images or the model. Remove or rename them."
            )
        empty = [c for c in found if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (folder / c).rglob("*"))]
        if empty:
            raise UserError(f"Class folder(s) {', '.join(empty)} in {folder} hold no images ({', '.join(IMG_EXTENSIONS)}).")

        # ImageFolder numbers this folder's own class folders; the model numbers `classes`,
        # some of which a test/ folder may lack. Remapped here rather than in a subclass
        # defined in this function: a DataLoader's workers must pickle the dataset, and a
        # local class cannot be pickled where workers are spawned (macOS, Windows).
        self.images = ImageFolder(str(folder), allow_empty=True)
        index_of = [classes.index(name) for name in self.images.classes]
        self.images.samples = self.images.imgs = [(path, index_of[i]) for path, i in self.images.samples]
        self.images.targets = [i for _, i in self.images.samples]
        self.images.classes, self.images.class_to_idx = list(classes), {name: i for i, name in enumerate(classes)}
        self.classes = classes

        readable, bad = [], []
        for index, (path, _) in enumerate(self.images.samples):
            (readable if _readable(path) else bad).append(index)
        if bad and not skip_unreadable:
            raise UserError(
                f"{len(bad)} image(s) in {folder} cannot be read, e.g. {self.images.samples[bad[0]][0]}. "
                f"Remove them, or set data.dataset.skip_unreadable=true to skip them."
            )
        if not readable:
            raise UserError(
                f"None of the {len(bad)} image(s) in {folder} can be read, e.g. {self.images.samples[bad[0]][0]}: "
                f"expected image files ({', '.join(IMG_EXTENSIONS)}) that PIL opens."
            )
        if bad:
            log.warning(f"Skipping {len(bad)} unreadable image(s) in {folder}, e.g. {self.images.samples[bad[0]][0]}")
        indices = torch.tensor(readable)
        if not presplit:
            train_indices, test_indices = seeded_split(len(indices), test_split, split_seed)
            indices = indices[train_indices if train else test_indices]
        self.indices = indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.images[self.indices[i]]


def _readable(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # noqa: BLE001 - PIL raises many kinds for broken files
        return False
    return True
