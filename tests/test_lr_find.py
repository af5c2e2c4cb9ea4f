"""The learning-rate range test: `python train.py tune=lr_find`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import FAST, run_cli, run_dirs
from src.data.batches import InMemoryBatches, Normalize
from src.data.builder import DataSplits
from src.data.synthetic import SyntheticImages
from src.models.mlp import MLP
from src.trainer.forward import ForwardPass
from src.tune.lr_find import Curve, LRFinder, suggested_command
from src.utils.errors import UserError

CPU = torch.device("cpu")


def test_the_suggestion_is_where_the_smoothed_loss_falls_fastest() -> None:
    lrs = [10 ** (-6 + 5 * i / 99) for i in range(100)]  # 1e-6 .. 1e-1
    # A loss that falls from 2 to 0.5 around lr 1e-3 (steepest there), then blows up.
    smoothed = [0.5 + 1.5 / (1 + (lr / 1e-3) ** 2) + (20 * lr) ** 4 for lr in lrs]
    suggestion = Curve(lrs, smoothed, smoothed).suggest()
    assert suggestion is not None and 0.8e-3 < suggestion < 1.25e-3
    assert Curve(lrs[:5], smoothed[:5], smoothed[:5]).suggest() is None, "too short to have a slope"


def test_the_range_test_grows_the_lr_exponentially_and_puts_everything_back() -> None:
    torch.manual_seed(0)
    data = SyntheticImages(train=True, train_size=256)
    batches = InMemoryBatches(data.data.unsqueeze(1), data.targets, 32, True, 0, Normalize([0.5], [0.25], CPU))
    model = MLP([1, 28, 28], 10, hidden_sizes=[32], dropout=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    optimizer.step()  # momentum buffers that the test must leave as they were
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)

    curve = LRFinder(min_lr=1e-4, max_lr=10.0, num_steps=40).range_test(ForwardPass(model, nn.CrossEntropyLoss(), CPU), optimizer, batches)

    assert curve.lrs[0] == pytest.approx(1e-4) and all(b / a == pytest.approx(10 ** (5 / 39)) for a, b in zip(curve.lrs, curve.lrs[1:]))
    assert "stopped at lr" in curve.stopped and len(curve.lrs) < 40, "an lr of 10 with momentum diverges"
    assert curve.suggestion is not None and 1e-4 < curve.suggestion < 10
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], m) for p, m in zip(model.parameters(), momentum))
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert torch.equal(torch.rand(3), expected_draw), "the random number generators are put back"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(UserError, match="0 < min_lr < max_lr"):
        LRFinder(min_lr=1.0, max_lr=0.1)
    with pytest.raises(UserError, match="tune.num_steps"):
        LRFinder(num_steps=5)


def test_without_matplotlib_the_test_refuses_to_start_and_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what an uninstalled package looks like to import
    with pytest.raises(UserError, match=r"pip install matplotlib"):
        model = nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = DataSplits(train=None, val=None, test=None, in_memory=True)
        run = dict(cfg=OmegaConf.create({"resume": None}), model=model, loss_fn=nn.MSELoss(), optimizer=optimizer, data=data)
        LRFinder()(**run, device=CPU, run_dir=Path("."), overrides=[])  # before any training step


def test_the_suggested_command_keeps_the_run_and_replaces_the_lr() -> None:
    command = suggested_command(["tune=lr_find", "model=cnn", "optimizer.lr=0.1", "tune.num_steps=100", "data.root=/my data"], 3e-4)
    assert command == "python train.py model=cnn 'data.root=/my data' optimizer.lr=3.00e-04"


def test_lr_find_writes_its_report_and_nothing_else(tmp_path: Path) -> None:
    result = run_cli(
        "train.py", "tune=lr_find", "data=synthetic", "model=mlp", "tune.num_steps=30", "tune.min_lr=1e-4", "tune.max_lr=10",
        *FAST, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "python train.py data=synthetic model=mlp trainer.device=cpu trainer.progress=none optimizer.lr=" in result.stdout
    (run,) = run_dirs(tmp_path)
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["lr_find.json", "lr_find.png", "train.log"]
    report = json.loads((run / "lr_find.json").read_text())
    assert report["rule"] == "steepest descent of the smoothed loss" and math.isfinite(report["suggestion"])
    assert len(report["lrs"]) == len(report["losses"]) == len(report["smoothed"]) <= 30
    assert (run / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
