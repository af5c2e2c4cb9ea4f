"""A dataset the framework has never heard of: any map-style Dataset returning
(input, class index) works. It is called with train=True for the training set (the
validation split is carved out of it) and train=False for the test set."""

import torch
from torch.utils.data import Dataset


class Bars(Dataset):
    """16x16 float images with one bright horizontal (class 0) or vertical (class 1) bar."""

    def __init__(self, train: bool, size: int = 1000) -> None:
        g = torch.Generator().manual_seed(0 if train else 1)
        self.labels = torch.randint(2, (size,), generator=g)
        self.positions = torch.randint(16, (size,), generator=g)
        self.noise = 0.3 * torch.randn(size, 1, 16, 16, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.noise[i].clone()
        if self.labels[i] == 0:
            image[0, self.positions[i], :] += 1.0
        else:
            image[0, :, self.positions[i]] += 1.0
        return image, int(self.labels[i])
