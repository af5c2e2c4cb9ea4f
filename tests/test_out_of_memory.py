"""Running out of memory: a training step that does goes on in smaller micro-batches, and
`data.batch_size=auto` finds the largest batch that fits. On the CPU, a stand-in model
raises torch.OutOfMemoryError above a batch size, as a GPU would."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import FAST, REPO, load, run_cli, run_dirs, trainer_cfg
from src.data.batches import InMemoryBatches, Normalize
from src.data.builder import DataSplits
from src.data.synthetic import SyntheticImages
from src.trainer.tasks.classification import Classification
from src.trainer.resume import resumed_config
from src.trainer.trainer import Trainer
from src.tune.batch_size import largest_fitting, search_batch_size
from src.utils.errors import RunStopped
from stand_ins import OutOfMemoryAbove

CPU = torch.device("cpu")


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
    # The trainer leaves recovery off on the CPU, whose allocator raises no OutOfMemoryError;
    # the stand-in raises one, as a GPU would.
    trainer.micro_batches.enabled = True
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
    with pytest.raises(RunStopped, match="after part of its gradient was summed with those of earlier batches of its accumulation window"):
        train(tmp_path / "b", OutOfMemoryAbove(limit=96, backward_fails_at=2), batch_size=16, accumulate=2)


def test_the_search_doubles_then_bisects_between_the_last_fit_and_the_first_failure() -> None:
    tried: list[int] = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 100

    assert largest_fitting(fits, cap=4096) == 100
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128, 96, 112, 104, 100, 102, 101]
    assert largest_fitting(lambda size: size <= 100, cap=48) == 48, "the cap, when it fits"
    assert largest_fitting(lambda size: False, cap=48) == 0


def test_batch_size_auto_finds_the_largest_batch_and_leaves_no_trace(tmp_path: Path) -> None:
    model = OutOfMemoryAbove(limit=100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    data = SyntheticImages(train=True, train_size=300)
    cfg = OmegaConf.create({"trainer": trainer_cfg()})
    # Built as src/train.py builds it for the search: batches of the cap (300 < max_batch_size).
    train = InMemoryBatches(data.data.unsqueeze(1), data.targets, 4096, True, 0, Normalize([0.5], [0.25], CPU))
    splits = DataSplits(train=train, val=None, test=None, in_memory=True, input_shape=(1, 28, 28))

    assert search_batch_size(model, nn.CrossEntropyLoss(), optimizer, splits, CPU, cfg) == 100
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}, "the trial steps' Adam moments are gone"
    assert search_batch_size(OutOfMemoryAbove(limit=1000), nn.CrossEntropyLoss(), optimizer, splits, CPU, cfg) == 300


def test_a_run_with_batch_size_auto_trains_with_the_size_it_found_and_keeps_it(tmp_path: Path) -> None:
    stand_in = ["model=linear", "model._target_=stand_ins.OutOfMemoryAbove", "+model.limit=50"]
    stand_in += ["~model.hidden_sizes", "~model.activation", "~model.dropout"]
    args = ["data=synthetic", "data.batch_size=auto", "data.eval_batch_size=50", "data.dataset.train_size=200", "trainer.epochs=1"]
    result = run_cli("train.py", *stand_in, *args, "logger=[]", *FAST, cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == 0, result.stderr
    assert "data.batch_size=auto: training with batches of 50, the largest that fits on cpu" in result.stdout
    assert "tried 1, 2, 4, 8, 16, 32, 64 (too big), 48, 56 (too big), 52 (too big), 50, 51 (too big)." in result.stdout
    (run,) = run_dirs(tmp_path)
    last = load(run / "checkpoints" / "last.pt")
    assert OmegaConf.create(last["config"]).data.batch_size == 50 and last["step"] == 4  # 160 training samples
    # Resuming, even with data.batch_size=auto on the command line, keeps the size found.
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["data=synthetic", "data.batch_size=auto", "resume=last.pt"])
    resumed = resumed_config(cfg, last, ["data=synthetic", "data.batch_size=auto", "resume=last.pt"], {"data"})
    assert resumed.data.batch_size == 50
