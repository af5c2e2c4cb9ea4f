"""Step-based runs (trainer.max_steps, val_every_n_steps, save_every_n_steps) and
schedulers stepped after every optimizer step (warmup_cosine, onecycle)."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from conftest import FAST, REPO, assert_same_training, load, run_cli, run_dirs, run_with_fault
from src.data.builder import build_data
from src.models.mlp import MLP
from src.trainer.clock import Clock, total_steps
from src.trainer.schedulers import WarmupCosine, build_scheduler, check_schedule_length
from src.trainer.tasks.classification import Classification
from src.trainer.trainer import Trainer
from src.utils.config import register_resolvers, validate_train_config
from src.utils.errors import UserError

CPU = torch.device("cpu")
register_resolvers()


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=["data=synthetic", *FAST, *overrides])


def test_total_steps_is_whichever_of_epochs_and_max_steps_ends_first() -> None:
    assert total_steps(epochs=3, max_steps=None, batches=10, accumulate=1) == 30
    assert total_steps(epochs=3, max_steps=25, batches=10, accumulate=1) == 25
    assert total_steps(epochs=None, max_steps=25, batches=10, accumulate=1) == 25
    assert total_steps(epochs=2, max_steps=None, batches=10, accumulate=4) == 6, "4 + 4 + a short window of 2: 3 steps an epoch"


def test_the_clock_says_what_is_due_after_a_step() -> None:
    clock = Clock(compose_train("trainer.epochs=null", "trainer.max_steps=12", "trainer.val_every_n_steps=5", "trainer.save_every_n_steps=4").trainer)
    due = {step: clock.due(step) for step in range(1, 13)}
    assert [s for s, d in due.items() if d.validate] == [5, 10, 12], "every 5 steps, and the run's last"
    assert [s for s, d in due.items() if d.save] == [4, 8, 12]
    assert [s for s, d in due.items() if d.last] == [12]
    assert clock.running(epoch=99, step=11) and not clock.running(epoch=0, step=12)
    assert clock.epoch_name(3) == "epoch 3"


def test_warmup_cosine_rises_then_falls_and_resumes_exactly() -> None:
    def make() -> tuple[torch.optim.Optimizer, WarmupCosine]:
        optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        return optimizer, WarmupCosine(optimizer, total_steps=20, warmup_steps=5, min_lr=0.1)

    optimizer, scheduler = make()
    lrs = []
    for _ in range(20):  # the lr each optimizer step uses, then the per-step scheduler steps
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]), "linear warmup to the optimizer's lr"
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:])) and lrs[-1] > 0.1, "a cosine down towards min_lr"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1), "min_lr at the run's end"

    optimizer, scheduler = make()  # stopped after step 8, saved, and continued in a fresh one
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    saved = copy.deepcopy(scheduler.state_dict())
    optimizer, scheduler = make()
    scheduler.load_state_dict(saved)
    assert scheduler.get_last_lr()[0] == lrs[8]
    check_schedule_length(scheduler, run_steps=20)
    with pytest.raises(UserError, match="planned for 20"):  # a resume that makes the run longer
        check_schedule_length(scheduler, run_steps=30)


def test_config_mistakes_are_named() -> None:
    bad = {
        ("trainer.epochs=null",): "trainer.epochs=null needs trainer.max_steps",
        ("trainer.max_steps=0",): "trainer.max_steps=0",
        ("trainer.val_every_n_steps=-5",): "trainer.val_every_n_steps=-5",
        ("trainer.save_every_n_steps=0",): "trainer.save_every_n_steps=0",
        ("trainer.val_every_n_steps=10", "data.val_split=0", "trainer.monitor=train/loss"): "needs validation data",
        ("scheduler=plateau", "+scheduler.interval=step"): "does not fit ReduceLROnPlateau",
        ("scheduler=warmup_cosine", "scheduler.interval=sometimes"): "scheduler.interval='sometimes'",
        ("scheduler=cosine", "trainer.epochs=null", "trainer.max_steps=100"): "Use scheduler=warmup_cosine",
    }
    for overrides, message in bad.items():
        with pytest.raises(UserError, match=re.escape(message)):
            validate_train_config(compose_train(*overrides))
    validate_train_config(compose_train("trainer.epochs=null", "trainer.max_steps=100", "scheduler=onecycle"))
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    with pytest.raises(UserError, match="scheduler.warmup_steps=100: .* below the run's 80 optimizer steps"):
        build_scheduler(compose_train("scheduler=warmup_cosine").scheduler, optimizer, run_steps=80)


class NoisyWhenEvaluated(MLP):
    """A model that draws from the global RNG when evaluated too (as test-time
    augmentation does), besides its dropout in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x = x + 1e-3 * torch.randn_like(x)
        return super().forward(x)


def make_trainer(tmp_path: Path, *overrides: str) -> Trainer:
    """A Trainer as src/train.py builds it, on synthetic images read through DataLoaders."""
    cfg = compose_train("data.in_memory=false", "data.dataset.train_size=300", "data.batch_size=16", "data.val_split=0.2", *overrides)
    torch.manual_seed(0)
    data = build_data(cfg.data, CPU, seed=0)
    model = NoisyWhenEvaluated([1, 28, 28], 10, hidden_sizes=[32], dropout=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = total_steps(cfg.trainer.epochs, cfg.trainer.max_steps, len(data.train), 1)
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, steps)
    return Trainer(
        model=model, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, scheduler=scheduler, scheduler_interval=interval,
        data=data, cfg=cfg.trainer, task=Classification(10), device=CPU, run_dir=tmp_path,
    )


def test_validating_and_saving_every_n_steps_changes_nothing_the_training_draws(tmp_path: Path) -> None:
    # 240 training images in batches of 16: 15 steps an epoch; the run ends inside epoch 2.
    run = ("trainer.epochs=null", "trainer.max_steps=22", "scheduler=warmup_cosine", "scheduler.warmup_steps=5")
    plain = make_trainer(tmp_path / "plain", *run)
    plain.fit()
    often = make_trainer(tmp_path / "often", *run, "trainer.val_every_n_steps=4", "trainer.save_every_n_steps=3")
    saved_at = []
    save = often.checkpoints.save
    often.checkpoints.save = lambda state, *args, **kwargs: (saved_at.append(state["step"]), save(state, *args, **kwargs))[1]
    often.fit()

    assert [r["step"] for r in plain.history] == [15, 22], "the epoch's end, and the run's last step"
    assert [r["step"] for r in often.history] == [4, 8, 12, 15, 16, 20, 22]
    assert [r["epoch"] for r in often.history] == [1, 1, 1, 1, 2, 2, 2]
    assert saved_at == [3, 4, 6, 8, 9, 12, 15, 16, 18, 20, 21, 22]
    assert often.step == plain.step == 22 and often.epoch == plain.epoch == 1
    for name, weights in plain.model.state_dict().items():
        assert torch.equal(weights, often.model.state_dict()[name]), name
    assert often.scheduler.state_dict() == plain.scheduler.state_dict()
    last = load(tmp_path / "often" / "checkpoints" / "last.pt")
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (22, 1, 7), "resumable where the run stopped"
    assert last["best_step"] == often.best_step and last["history"][-1]["step"] == 22


# A run that ends inside its second epoch: 400 training images in batches of 8 are 50
# steps an epoch; validation at steps 20, 40, 50 (the epoch's end) and 60 (the last).
RUN = [
    "data=synthetic", "model=mlp", "data.dataset.train_size=500", "data.batch_size=8", "trainer.deterministic=true",
    "trainer.epochs=null", "trainer.max_steps=60", "trainer.val_every_n_steps=20", "scheduler=warmup_cosine",
    "scheduler.warmup_steps=10", "trainer.log_every_n_steps=5", "logger=csv", *FAST,
]

# SIGTERM to itself once step 30 is taken: the loop sees it right after that step.
SIGTERM_AT_STEP_30 = """
import os, signal
from src.trainer.clock import Clock
due = Clock.due
def due_and_sigterm(self, step):
    if step == 30:
        os.kill(os.getpid(), signal.SIGTERM)
    return due(self, step)
Clock.due = due_and_sigterm
"""


def test_a_step_run_with_warmup_cosine_resumes_bitwise_from_a_sigterm_between_validations(tmp_path: Path) -> None:
    (tmp_path / "uninterrupted").mkdir()
    result = run_cli("train.py", *RUN, cwd=tmp_path / "uninterrupted")
    assert result.returncode == 0, result.stderr
    (uninterrupted,) = run_dirs(tmp_path / "uninterrupted")
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert [r["step"] for r in metrics["history"]] == [20, 40, 50, 60] and metrics["steps_run"] == 60
    assert metrics["best"]["step"] == metrics["best_step"]
    with open(uninterrupted / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lr = [float(r["train/lr"]) for r in rows if r["train/lr"]]
    assert lr[0] < lr[1] == max(lr) and all(a > b for a, b in zip(lr[1:], lr[2:])), "warmup, then the cosine"
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [20, 40, 50, 60]

    result = run_with_fault("train.py", SIGTERM_AT_STEP_30, *RUN, cwd=tmp_path)
    assert result.returncode == 143, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    assert load(last)["step"] == 30 and [r["step"] for r in load(last)["history"]] == [20]
    result = run_cli("train.py", f"resume={last}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_training(uninterrupted / "checkpoints" / "last.pt", last)
