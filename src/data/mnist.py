"""MNIST read straight from its four IDX files, without importing torchvision.

Importing torchvision at all imports `torchvision.models`, whose ops import
`torch._dynamo` (and with it sympy and triton): over a second of every run's start-up
before the first step. The repository ships MNIST (data/MNIST/raw/), so reading those
files is all most runs need. Where the files are not there yet, torchvision's MNIST
downloads them (and reports what is missing), so it stays the tool for fetching data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

# The files of each split, in <root>/MNIST/raw/ (torchvision's layout and names).
FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# IDX headers: a magic number (0x0803: unsigned bytes, 3 dimensions; 0x0801: 1 dimension), then each dimension.
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


class MNIST(Dataset):
    """torchvision.datasets.MNIST's interface: `data` (N, 28, 28) uint8, `targets`
    int64, `classes`, and items as (PIL image, int) through `transform`."""

    classes = [f"{i} - {name}" for i, name in enumerate("zero one two three four five six seven eight nine".split())]

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
    ) -> None:
        self.root, self.train = Path(root), train
        self.transform, self.target_transform = transform, target_transform
        images, labels = (self.root / "MNIST" / "raw" / name for name in FILES[train])
        if images.is_file() and labels.is_file():
            self.data = read_idx(images, IMAGES_MAGIC)
            self.targets = read_idx(labels, LABELS_MAGIC).long()
        else:  # not here yet: torchvision downloads them, or says why it cannot
            from torchvision.datasets import MNIST as TorchvisionMNIST

            fetched = TorchvisionMNIST(str(root), train=train, download=download)
            self.data, self.targets = fetched.data, fetched.targets

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from PIL import Image

        image: Any = Image.fromarray(self.data[index].numpy(), mode="L")
        target: Any = int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """The uint8 tensor of an IDX file whose header starts with `magic` (big-endian)."""
    raw = path.read_bytes()
    dims = magic % 256
    header = [int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(dims + 1)]
    shape = header[1:]
    if header[0] != magic or len(raw) != 4 * (dims + 1) + math.prod(shape):
        raise RuntimeError(f"{path} is not an MNIST IDX file of {dims} dimension(s): its header or size is wrong")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 * (dims + 1)).view(shape)

