"""Build the train/val/test batches a run iterates over, from the `data` config.

The dataset class named by `data.dataset._target_` is called with `train=True` for the
training set (the validation split is carved out of it with `data.split_seed`: a
`data.val_split` fraction, or fold `data.fold` of `data.folds`) and
`train=False` for the test set, the convention of torchvision's datasets. Datasets that
expose uint8 `data` and `targets` (MNIST, FashionMNIST, CIFAR-10, synthetic) can take
the in-memory path; any other map-style dataset goes through a DataLoader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch.utils.data import Dataset

from src.data.bundled import MNIST_TARGET, unpack_mnist
from src.data.batches import BatchAugment, InMemoryBatches, LoaderBatches, Normalize, TransformedSubset
from src.data.splits import kfold_split, seeded_split
from src.trainer.tasks import task_class
from src.utils import distributed
from src.utils.errors import UserError, one_line

log = logging.getLogger(__name__)

Batches = Union[InMemoryBatches, LoaderBatches]

# Above this size, `in_memory: auto` leaves a dataset to the DataLoader path.
IN_MEMORY_AUTO_LIMIT_BYTES = 4 * 2**30


@dataclass
class DataSplits:
    train: Batches | None
    val: Batches | None
    test: Batches | None
    in_memory: bool
    # One input's shape, e.g. (1, 28, 28) or (num_features,).
    input_shape: tuple[int, ...] = ()
    # Per-feature mean/std computed on the training split (data.standardize), which a
    # checkpoint keeps so evaluation normalises exactly as training did.
    stats: dict[str, list[float]] | None = None
    # Per-column mean/std of the training split's regression targets (data.standardize_target),
    # which the model learns standardised; a checkpoint keeps them to report in their units.
    target_stats: dict[str, list[float]] | None = None
    # The dataset's class names (torchvision's `classes`, an image folder's class
    # folders) and a table's feature column names, when it has them.
    classes: list[str] | None = None
    features: list[str] | None = None


def build_data(
    cfg: DictConfig,
    device: torch.device,
    seed: int,
    splits: tuple[str, ...] = ("train", "val", "test"),
    stats: dict[str, list[float]] | None = None,
    limit_batches: int | None = None,
    overfit_batches: int = 0,
    target_stats: dict[str, list[float]] | None = None,
    classes: list[str] | None = None,
) -> DataSplits:
    """Batches for the requested splits; `seed` orders the training batches of each
    epoch; `stats` and `target_stats` are standardisation statistics saved by an
    earlier run, and `classes` its class names (a dataset that takes `classes`, such
    as a table of class names, maps its labels by them).

    Debugging: `limit_batches` caps every split's batches per epoch; `overfit_batches`
    trains on the first N batches of the training set, unshuffled, every epoch, and
    validates on those same batches.
    """
    needs_train = bool({"train", "val"} & set(splits)) or (cfg.get("standardize") and stats is None)
    with distributed.rank_zero_first():  # under torchrun, one process downloads
        train_set = load_dataset(cfg, train=True, classes=classes) if needs_train else None
        test_set = load_dataset(cfg, train=False, classes=classes) if "test" in splits else None
    in_memory = _use_in_memory(cfg, [d for d in (train_set, test_set) if d is not None])
    train_idx, val_idx = train_and_val_indices(cfg, len(train_set)) if train_set is not None else (None, None)
    # An empty split would report metrics of nothing; say what to change instead.
    if train_set is not None:
        _check_train_and_val_sizes(cfg, len(train_set), len(train_idx), len(val_idx), splits, overfit_batches)
    if test_set is not None and len(test_set) == 0:
        raise UserError(f"The test split of data={cfg.name} is empty: {_what_sets_the_test_size(cfg)}")
    if cfg.get("standardize") and stats is None:
        features = _as_tensors(train_set)[0][train_idx].double()
        stats = {"mean": features.mean(dim=0).tolist(), "std": features.std(dim=0).clamp_min(1e-8).tolist()}
    if cfg.get("standardize_target") and target_stats is None and "train" in splits:
        target_stats = task_class(cfg.task).target_statistics(torch.as_tensor(train_set.targets)[train_idx])
    normalize = Normalize(*normalization(cfg, stats), device)
    augment = BatchAugment(**cfg.augment) if cfg.get("augment") else None

    rank, world_size = distributed.rank_and_world_size()  # under torchrun, each rank gets its share

    def batches(dataset: Dataset, indices: torch.Tensor | None, training: bool, shuffle: bool = True) -> Batches:
        """Training batches (shuffled unless told not to, augmented) or evaluation batches.
        Under torchrun, training shares are padded: every rank must take as many steps."""
        batch_size = cfg.batch_size if training else cfg.eval_batch_size
        shuffle = training and shuffle
        if in_memory:
            inputs, targets = _as_tensors(dataset)
            if indices is not None:
                inputs, targets = inputs[indices], targets[indices]
            return InMemoryBatches(
                inputs.to(device), targets.to(device), batch_size, shuffle, seed, normalize,
                augment if shuffle else None, rank, world_size, pad=training,
            )
        transform = sample_transform(cfg, "train" if shuffle else "eval")
        subset = TransformedSubset(dataset, None if indices is None else indices.tolist(), transform)
        return LoaderBatches(subset, batch_size, shuffle, seed, cfg.num_workers, device, normalize, rank, world_size, pad=training)

    train = val = test = None
    if train_set is not None and overfit_batches:
        few = train_idx[: overfit_batches * cfg.batch_size]
        train = batches(train_set, few, training=True, shuffle=False)
        val = batches(train_set, few, training=False)
    elif train_set is not None:
        if "train" in splits:
            train = batches(train_set, train_idx, training=True)
        if "val" in splits and len(val_idx) > 0:
            val = batches(train_set, val_idx, training=False)
    if test_set is not None:
        test = batches(test_set, None, training=False)
    for split in (train, val, test):
        if split is not None:
            split.limit = limit_batches
    any_set = train_set if train_set is not None else test_set
    if in_memory:
        input_shape = tuple(_as_tensors(any_set)[0].shape[1:])
    else:
        input_shape = tuple(sample_transform(cfg, "eval")(any_set[0][0]).shape)
    return DataSplits(
        train=train, val=val, test=test, in_memory=in_memory, input_shape=input_shape, stats=stats, target_stats=target_stats,
        classes=_names(any_set, "classes"), features=_names(any_set, "feature_names"),
    )


def normalization(cfg: DictConfig, stats: dict[str, list[float]] | None) -> tuple[list[float] | None, list[float] | None]:
    """The (mean, std) a batch is normalised with: the training split's feature
    statistics when the data is standardised (`stats`), else data.mean and data.std."""
    mean, std = (stats["mean"], stats["std"]) if stats else (cfg.mean, cfg.std)
    return (None if mean is None else list(mean)), (None if std is None else list(std))


def _names(dataset: Any, attribute: str) -> list[str] | None:
    """`dataset.<attribute>` when it is a list of names (what a checkpoint may keep), else None."""
    names = getattr(dataset, attribute, None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
        return list(names)
    return None


def train_and_val_indices(cfg: DictConfig, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set's (training, validation) sample indices: with `data.folds`, fold
    `data.fold` of a seeded K-fold split validates (cross-validation; `data.val_split` is
    then not used), else a seeded `data.val_split` fraction does."""
    folds = cfg.get("folds")
    if not folds:
        return seeded_split(num_samples, cfg.val_split, cfg.split_seed)
    if 0 < num_samples < folds:
        raise UserError(
            f"data.folds={folds} is more than the {num_samples} training sample(s) of data={cfg.name}: some folds "
            f"would be empty. Use at most data.folds={num_samples}, or more data."
        )
    log.info(f"Cross-validation: fold {cfg.fold} of data.folds={folds} is the validation split (data.val_split is not used)")
    return kfold_split(num_samples, folds, cfg.fold, cfg.split_seed)


def _check_train_and_val_sizes(
    cfg: DictConfig, num_samples: int, num_train: int, num_val: int, splits: tuple[str, ...], overfit_batches: int
) -> None:
    """Refuse an empty training split, and an empty validation split that data.val_split asked for."""
    if num_samples == 0:
        raise UserError(
            f"The training set of data={cfg.name} ({cfg.dataset._target_}) has no samples: "
            f"check the dataset's files and data.dataset.* values."
        )
    if num_train == 0 and "train" in splits:
        raise UserError(
            f"The training split is empty: data.val_split={cfg.val_split} puts all {num_samples} training samples "
            f"into the validation split. Lower data.val_split (e.g. 0.1), or use more data."
        )
    if num_val == 0 and cfg.val_split > 0 and "val" in splits and not overfit_batches:
        fix = f"Raise data.val_split to at least {1 / num_samples:.3g}, use more data" if num_samples > 1 else "Use more data"
        raise UserError(
            f"The validation split is empty: data.val_split={cfg.val_split} of the {num_samples} training sample(s) rounds "
            f"to none. {fix}, or train without validation: data.val_split=0 trainer.monitor=train/loss."
        )


def _what_sets_the_test_size(cfg: DictConfig) -> str:
    """The data.dataset key that sizes the test split and its value, for an error message."""
    for key in ("test_split", "test_size"):
        if key in cfg.dataset:
            return f"data.dataset.{key}={cfg.dataset[key]} leaves it no samples. Raise data.dataset.{key}, or use more data."
    return f"{cfg.dataset._target_}(train=False) has no samples. Check the dataset's test files and data.dataset.* values."


def sample_transform(cfg: DictConfig, split: str) -> Any:
    """The DataLoader path's per-sample transform: `data.transforms.<split>` (a list of
    torchvision v2 transforms by `_target_`), then conversion to a uint8 CHW tensor.
    Normalisation is not in it: batches are normalised on the device."""
    steps = [instantiate(step) for step in (cfg.get("transforms") or {}).get(split) or []]
    if not steps:
        return to_image_tensor
    from torchvision.transforms import v2

    return v2.Compose([*steps, to_image_tensor])


def to_image_tensor(sample: Any) -> torch.Tensor:
    """PIL image, HWC array or tensor -> CHW tensor, keeping uint8 (normalised per batch).
    Feature vectors (1-d tensors, e.g. CSV rows) pass through as they are."""
    if torch.is_tensor(sample) and sample.ndim == 1:
        return sample
    # Imported here: torchvision costs ~2 s to import, and runs on synthetic or custom
    # in-memory data never need it.
    from torchvision.transforms.v2.functional import to_image

    return to_image(sample).as_subclass(torch.Tensor)


def load_dataset(cfg: DictConfig, train: bool, classes: list[str] | None = None) -> Dataset:
    """Instantiate `data.dataset` for one split; a missing or undownloadable dataset is a
    UserError. `classes` (a trained model's) go to a dataset config with a `classes` key."""
    if cfg.dataset._target_ == MNIST_TARGET:  # the repository's bundled copy, gzipped
        unpack_mnist(Path(str(cfg.dataset.root)))
    named = {"classes": list(classes)} if classes and "classes" in cfg.dataset else {}
    try:
        return instantiate(cfg.dataset, train=train, **named)
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):  # a dataset of ours explaining what is wrong
            raise cause from None
        if not isinstance(cause, (RuntimeError, OSError)):
            raise
        raise UserError(_missing_dataset_message(cfg, cause)) from None


def _missing_dataset_message(cfg: DictConfig, cause: BaseException) -> str:
    target = cfg.dataset._target_
    root = Path(str(cfg.dataset.get("root", cfg.get("root", "."))))
    reason = one_line(cause)
    where = f"under {root}"
    try:
        cls = get_class(target)
    except Exception:
        cls = None
    resources = getattr(cls, "resources", None)
    if resources:  # the MNIST family: raw IDX files in <root>/<ClassName>/raw/
        names = ", ".join(Path(url).name for url, _ in resources)
        where = f"in {root / cls.__name__ / 'raw'}/ (the files {names}, gzipped or not)"
    elif getattr(cls, "base_folder", None):  # CIFAR: the extracted python batches
        where = f"in {root / cls.base_folder}/ (or its archive {getattr(cls, 'filename', '')} in {root}/)"
    download = cfg.dataset.get("download", False)
    hint = "It could not be downloaded (no network?)" if download else "Downloading is off (data.dataset.download=false)"
    return (
        f"Could not load the {cfg.name} dataset ({target}) from data.root={str(root)!r}: {reason}. "
        f"{hint}. Put the dataset files {where}, or point data.root at the folder "
        f"that holds them, e.g. `python train.py data={cfg.name} data.root=/path/to/datasets`."
    )


def _as_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset's uint8 `data` as (N, C, H, W) and its `targets` as int64."""
    data = torch.as_tensor(np.asarray(dataset.data)) if not torch.is_tensor(dataset.data) else dataset.data
    if data.ndim == 3:  # (N, H, W): one channel
        data = data.unsqueeze(1)
    elif data.ndim == 4:  # (N, H, W, C) like torchvision's CIFAR arrays
        data = data.permute(0, 3, 1, 2)
    if data.is_floating_point():  # feature rows (N, F): regression or classification targets as they are
        return data.contiguous(), torch.as_tensor(dataset.targets)
    return data.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _can_hold_in_memory(dataset: Any) -> bool:
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    images = getattr(data, "dtype", None) in (torch.uint8, np.uint8) and getattr(data, "ndim", 0) in (3, 4)
    table = torch.is_tensor(data) and data.dtype == torch.float32 and data.ndim == 2
    # A transform of the dataset's own (torchvision's `transform=`) runs only in its
    # __getitem__, which the in-memory path never calls.
    own_transform = any(getattr(dataset, name, None) is not None for name in ("transform", "target_transform", "transforms"))
    return data is not None and targets is not None and (images or table) and len(data) == len(targets) and not own_transform


def _use_in_memory(cfg: DictConfig, datasets: list[Any]) -> bool:
    setting = cfg.in_memory
    capable = all(_can_hold_in_memory(d) for d in datasets)
    if setting is False:
        return False
    if setting is True:
        if not capable:
            raise UserError(
                f"data.in_memory=true needs a dataset that exposes uint8 `data` (N, H, W[, C]) or float32 `data` "
                f"(N, F) and `targets` (like torchvision's MNIST, FashionMNIST, CIFAR10, the synthetic data or csv) "
                f"and has no `transform` of its own (the in-memory path reads `data` directly); "
                f"{cfg.dataset._target_} does not fit. Use data.in_memory=auto or false."
            )
        return True
    size = sum(np.asarray(d.data).nbytes if not torch.is_tensor(d.data) else d.data.nbytes for d in datasets) if capable else 0
    return capable and size <= IN_MEMORY_AUTO_LIMIT_BYTES
