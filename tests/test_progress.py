"""The terminal's progress bar: speed while training, and a bar while validating."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from conftest import trainer_cfg
from src.data.batches import InMemoryBatches, Normalize
from src.data.builder import DataSplits
from src.data.synthetic import SyntheticImages
from src.models.mlp import MLP
from src.trainer import trainer as trainer_module
from src.trainer.progress import NoProgress, RichProgress
from src.trainer.tasks.classification import Classification

CPU = torch.device("cpu")


def test_the_rich_bar_shows_samples_per_second() -> None:
    bar = RichProgress()
    bar.start("epoch 1/3", total=20, batch_size=128)
    for _ in range(5):
        time.sleep(0.02)  # at most 50 batches a second
        bar.advance()
    printed = io.StringIO()
    Console(file=printed, width=200).print(bar.progress.get_renderable())
    text = printed.getvalue()
    assert "epoch 1/3" in text and "5/20" in text
    speed = int(re.search(r"([\d,]+) samples/s", text).group(1).replace(",", ""))
    assert 128 <= speed <= 128 * 50, "batches per second times 128 samples"


class Recorder(NoProgress):
    """A progress display that writes down what the loop asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, description: str, total: int, completed: int = 0, batch_size: int = 1) -> None:
        self.calls.append(f"{description}: {total} batches of {batch_size}")

    def advance(self) -> None:
        self.calls.append("advance")

    def stop(self) -> None:
        self.calls.append("stop")


def test_an_epoch_shows_its_training_then_its_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = SyntheticImages(train=True, train_size=96)
    images, normalize = data.data.unsqueeze(1), Normalize([0.5], [0.25], CPU)
    train = InMemoryBatches(images[:64], data.targets[:64], 32, True, 0, normalize)
    val = InMemoryBatches(images[64:], data.targets[64:], 16, False, 0, normalize)
    model = MLP([1, 28, 28], 10, hidden_sizes=[16])
    trainer = trainer_module.Trainer(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler=None,
        data=DataSplits(train=train, val=val, test=None, in_memory=True),
        cfg=trainer_cfg("trainer.epochs=1", "trainer.monitor=val/loss"),
        task=Classification(10),
        device=CPU,
        run_dir=tmp_path,
    )
    recorder = Recorder()
    monkeypatch.setattr(trainer_module, "make_progress", lambda kind: recorder)
    trainer.fit()
    assert recorder.calls == [
        "epoch 1/1: 2 batches of 32", "advance", "advance", "stop",
        "validating: 2 batches of 16", "advance", "advance", "stop",
    ]
