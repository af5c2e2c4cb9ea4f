"""The two data paths behind one interface.

`InMemoryBatches` slices batches from uint8 tensors held on the training device and
normalises them there: no workers, no PIL, no per-sample collation. `LoaderBatches`
wraps a DataLoader over any map-style Dataset. Both draw the epoch's order from the
same seeded permutation, so for the same data they yield the same batches, and a
mid-epoch resume only needs the epoch and the batch index.

Under torchrun each rank takes its own share of that order (`shard`): the training
shares are padded to equal length, as torch's DistributedSampler pads them, so every
rank runs the same number of steps; evaluation shares are not, so every sample is
counted exactly once when the ranks' metric sums are added up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): the epoch's order and its augmentation follow it."""
    return seed * 100_003 + epoch


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator)


def shard(order: torch.Tensor, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    """This rank's share of `order`: every `world_size`-th entry, starting at `rank`.
    With `pad`, entries from the start are repeated so that all shares are equally long."""
    if world_size == 1:
        return order
    if pad:
        total = math.ceil(len(order) / world_size) * world_size
        order = order[torch.arange(total) % len(order)]
    return order[rank::world_size]


def epoch_share(num_samples: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    """The sample indices of one epoch for one rank: both data paths use this order."""
    order = epoch_permutation(num_samples, seed, epoch) if shuffle else torch.arange(num_samples)
    return shard(order, rank, world_size, pad)


def rank_seed(seed: int, rank: int) -> int:
    """`seed` for rank 0 (and a single process); another seed for each other rank, so
    that ranks do not draw the same augmentations for their different samples."""
    return seed if rank == 0 else (seed * 1_009 + rank) % 2**63


def shard_size(num_samples: int, rank: int, world_size: int, pad: bool) -> int:
    """len(shard(...)) for an order of `num_samples`, without building it."""
    if pad:
        return math.ceil(num_samples / world_size)
    return len(range(rank, num_samples, world_size))


class Normalize:
    """uint8 pixels -> float in [0, 1] -> (x - mean) / std, on whole batches on the device."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device) -> None:
        self.mean = None if mean is None else torch.tensor(list(mean), dtype=torch.float32, device=device)
        self.std = None if std is None else torch.tensor(list(std), dtype=torch.float32, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean is not None and self.std is not None:
            shape = (-1,) + (1,) * (x.ndim - 2)  # broadcast over the channel dimension
            x = (x - self.mean.view(shape)) / self.std.view(shape)
        return x


class BatchAugment:
    """Random crops (of the zero-padded image) and horizontal flips of a whole uint8
    batch on the device: the in-memory path's augmentation."""

    def __init__(self, crop_padding: int = 0, horizontal_flip: bool = False) -> None:
        self.padding, self.flip = crop_padding, horizontal_flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        device = x.device
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=device) < 0.5
            x = torch.where(flipped.view(n, 1, 1, 1), x.flip(3), x)
        if self.padding:
            p = self.padding
            padded = F.pad(x, (p, p, p, p))
            top = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=device)
            left = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=device)
            rows = (top + torch.arange(h, device=device)).view(n, 1, h, 1)
            cols = (left + torch.arange(w, device=device)).view(n, 1, 1, w)
            channels = torch.arange(x.shape[1], device=device).view(1, -1, 1, 1)
            x = padded[torch.arange(n, device=device).view(n, 1, 1, 1), channels, rows, cols]
        return x


class InMemoryBatches:
    """Batches sliced from tensors that already live on the training device.

    With `augment`, each batch is augmented on the device with random numbers drawn
    from a generator seeded by (seed, epoch, batch, rank): a resumed epoch repeats them.
    `rank` and `world_size` pick this process's share of the data under torchrun;
    `pad` makes every rank's share equally long (for training).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        normalize: Normalize,
        augment: BatchAugment | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.normalize, self.augment = normalize, augment
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.generator = torch.Generator(device=targets.device) if augment else None
        self.epoch, self.start_batch = 0, 0
        self.limit: int | None = None  # at most this many batches per epoch (debug runs)

    @property
    def num_samples(self) -> int:
        """Samples in the whole split (all ranks together)."""
        return len(self.targets)

    def __len__(self) -> int:
        share = shard_size(self.num_samples, self.rank, self.world_size, self.pad)
        return min(math.ceil(share / self.batch_size), self.limit or math.inf)  # type: ignore[type-var]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor | None:
        """This rank's sample indices for the epoch; None: all samples in order."""
        if not self.shuffle and self.world_size == 1:
            return None  # plain slices: no index tensor to build
        order = epoch_share(self.num_samples, self.shuffle, self.seed, self.epoch, self.rank, self.world_size, self.pad)
        return order.to(self.targets.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for i in range(self.start_batch, len(self)):
            rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
            index = rows if order is None else order[rows]
            inputs = self.inputs[index]
            if self.augment is not None and self.generator is not None:
                self.generator.manual_seed(rank_seed(epoch_seed(self.seed, self.epoch) * 1_000_003 + i, self.rank))
                inputs = self.augment(inputs, self.generator)
            yield self.normalize(inputs), self.targets[index]


class EpochSampler(Sampler[int]):
    """Indices in the order `epoch_permutation` gives, starting at a given position.

    The DataLoader path's distributed sampler: like torch's DistributedSampler it is
    seeded, told the epoch by `set_epoch` and gives each rank its padded share, and
    unlike it it can start in the middle of an epoch and orders samples exactly as
    the in-memory path does."""

    def __init__(self, num_samples: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = False) -> None:
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def share_size(self) -> int:
        """Samples in this rank's share of an epoch."""
        return shard_size(self.num_samples, self.rank, self.world_size, self.pad)

    def __len__(self) -> int:
        return self.share_size() - self.start

    def __iter__(self) -> Iterator[int]:
        order = epoch_share(self.num_samples, self.shuffle, self.seed, self.epoch, self.rank, self.world_size, self.pad)
        return iter(order[self.start :].tolist())


class LoaderBatches:
    """A DataLoader over any map-style dataset, moving each batch to the device."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        num_workers: int,
        device: torch.device,
        normalize: Normalize,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
    ) -> None:
        self.sampler = EpochSampler(len(dataset), shuffle, seed, rank, world_size, pad)  # type: ignore[arg-type]
        self.batch_size, self.seed = batch_size, seed
        self.device, self.normalize = device, normalize
        # Its own generator: starting an iterator draws the workers' base seed from it,
        # which would otherwise consume the global RNG (and change dropout, say).
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=self.generator,
        )
        self.start_batch = 0
        self.limit: int | None = None  # at most this many batches per epoch (debug runs)

    @property
    def num_samples(self) -> int:
        """Samples in the whole split (all ranks together)."""
        return self.sampler.num_samples

    def __len__(self) -> int:
        return min(math.ceil(self.sampler.share_size() / self.batch_size), self.limit or math.inf)  # type: ignore[type-var]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.batch_size
        self.start_batch = start_batch
        self.generator.manual_seed(rank_seed(epoch_seed(self.seed, epoch), self.sampler.rank))  # worker seeds follow (seed, epoch, rank)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch, (inputs, targets) in enumerate(self.loader, start=self.start_batch):
            if batch >= len(self):
                break
            inputs = inputs.to(self.device, non_blocking=True)
            yield self.normalize(inputs), targets.to(self.device, non_blocking=True)


class TransformedSubset(Dataset):
    """`dataset[indices[i]]` with `transform` applied to the input."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None, transform: Any) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.dataset[self.indices[i] if self.indices is not None else i]
        return self.transform(x), y
