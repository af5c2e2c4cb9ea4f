from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    """Learnable random images with a fixed seed, laid out like torchvision's datasets.

    Every class has a random prototype image; each sample is its class prototype plus
    Gaussian noise, stored as uint8 in `data` ((N, H, W) for one channel, else
    (N, H, W, C)) with integer labels in `targets`. Train and test share prototypes.
    """

    def __init__(
        self,
        train: bool = True,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        train_size: int = 2000,
        test_size: int = 500,
        noise: float = 0.5,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        channels, height, width = input_shape
        prototypes = torch.rand(num_classes, height, width, channels, generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed + (1 if train else 2))
        size = train_size if train else test_size
        self.targets = torch.randint(num_classes, (size,), generator=g)
        images = prototypes[self.targets] + noise * torch.randn(size, height, width, channels, generator=g)
        self.data = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        if channels == 1:
            self.data = self.data.squeeze(-1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.data[index].numpy()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
