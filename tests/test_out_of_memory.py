"""Running out of memory: a training step that does goes on in smaller micro-batches, and
`data.batch_size=auto` finds the largest batch that fits. On the CPU, a stand-in model
raises torch.OutOfMemoryError above a batch size, as a GPU would."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import trainer_cfg
from src.data.batches import InMemoryBatches, Normalize
from src.data.builder import DataSplits
from src.data.synthetic import SyntheticImages
from src.trainer.tasks.classification import Classification
from src.trainer.trainer import Trainer
from src.utils.errors import RunStopped

CPU = torch.device("cpu")


class OutOfMemoryAbove(nn.Module):
    """A small classifier on a device that holds at most `limit` samples per forward.

    Like a real forward that runs out midway, it draws its dropout first and only then
    raises. With `backward_fails_at=n`, the backward pass of its n-th forward runs out
    of memory instead."""

    def __init__(self, limit: int, backward_fails_at: int | None = None) -> None:
        super().__init__()
        self.limit, self.backward_fails_at = limit, backward_fails_at
        self.dropout = nn.Dropout(0.3)
        self.linear = nn.Linear(28 * 28, 10)
        self.sizes: list[int] = []  # the batch size of every forward that ran to its end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.flatten(1))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"stand-in: {len(x)} samples do not fit, {self.limit} do")
        self.sizes.append(len(x))
        outputs = self.linear(x)
        return FailingBackward.apply(outputs) if len(self.sizes) == self.backward_fails_at else outputs


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("stand-in: out of memory in the backward pass")


def train(tmp_path: Path, model: nn.Module, batch_size: int, accumulate: int, epochs: int = 1) -> Trainer:
    """`epochs` of training on 96 synthetic images (an exact number of batches), with Adam."""
    torch.manual_seed(0)
    data = SyntheticImages(train=True, train_size=96)
    train = InMemoryBatches(data.data.unsqueeze(1), data.targets, batch_size, True, 0, Normalize([0.5], [0.25], CPU))
    trainer = Trainer(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        scheduler=None,
        data=DataSplits(train=train, val=None, test=None, in_memory=True),
        cfg=trainer_cfg(f"trainer.epochs={epochs}", f"trainer.accumulate_grad_batches={accumulate}"),
        task=Classification(10),
        device=CPU,
        run_dir=tmp_path,
    )
    trainer.fit()
    return trainer


def test_out_of_memory_halves_the_micro_batch_and_trains_as_if_accumulating_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(1)
    recovering, reference = OutOfMemoryAbove(limit=10), OutOfMemoryAbove(limit=10)
    reference.load_state_dict(recovering.state_dict())
    with caplog.at_level(logging.WARNING):
        ran_out = train(tmp_path / "a", recovering, batch_size=32, accumulate=1, epochs=2)
    # 32 does not fit, 16 does not either, 8 does: each batch now runs as 4 micro-batches.
    assert "Out of memory in a training step with micro-batches of 32 samples" in caplog.text
    assert "micro-batches of 16 samples" in caplog.text and ran_out.micro_batches.pieces == 4
    assert recovering.sizes == [8] * 24, "every sample of 2 epochs once, in micro-batches of 8"
    # The same samples and steps as batches of 8 with 4 accumulated per step, from the start.
    planned = train(tmp_path / "b", reference, batch_size=8, accumulate=4, epochs=2)
    assert ran_out.step == planned.step == 6
    for (name, a), b in zip(recovering.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(ran_out.optimizer.state.values(), planned.optimizer.state.values()):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_out_of_memory_in_a_backward_is_retried_only_when_no_other_batch_was_summed(tmp_path: Path) -> None:
    # The window's first batch: its partial gradients are cleared and it runs again in halves.
    first = train(tmp_path / "a", OutOfMemoryAbove(limit=96, backward_fails_at=1), batch_size=16, accumulate=2)
    assert first.micro_batches.pieces == 2 and first.step == 3
    # The window's second batch: part of it may be summed with the first one's gradients.
    with pytest.raises(RunStopped, match="after the gradients of earlier batches of its accumulation window were summed"):
        train(tmp_path / "b", OutOfMemoryAbove(limit=96, backward_fails_at=2), batch_size=16, accumulate=2)
