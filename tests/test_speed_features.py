"""Mixed precision, torch.compile, gradient accumulation, lazy imports, the benchmark."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import REPO, trainer_cfg
from src.data.batches import InMemoryBatches, Normalize
from src.data.builder import DataSplits
from src.data.synthetic import SyntheticImages
from src.models.mlp import MLP
from src.trainer.checkpoint import load_model_state
from src.trainer.tasks.classification import Classification
from src.trainer.trainer import Trainer

CPU = torch.device("cpu")


def make_trainer(tmp_path: Path, model: nn.Module, batch_size: int, *overrides: str, lr: float = 0.1) -> Trainer:
    """A Trainer over 128 synthetic images, as src/train.py would build it."""
    data = SyntheticImages(train=True, train_size=128)
    batches = InMemoryBatches(data.data.unsqueeze(1), data.targets, batch_size, True, 0, Normalize([0.5], [0.25], CPU))
    return Trainer(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        scheduler=None,
        data=DataSplits(train=batches, val=None, test=None, in_memory=True),
        cfg=trainer_cfg(*overrides),
        task=Classification(10),
        device=CPU,
        run_dir=tmp_path,
    )


def test_accumulating_4_batches_of_32_equals_one_batch_of_128(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP([1, 28, 28], 10, hidden_sizes=[64], dropout=0.0)  # no dropout, no batch norm
    whole = make_trainer(tmp_path / "a", copy.deepcopy(model), 128)
    accumulated = make_trainer(tmp_path / "b", copy.deepcopy(model), 32, "trainer.accumulate_grad_batches=4")
    whole.train_epoch()
    accumulated.train_epoch()
    assert whole.step == accumulated.step == 1, "one optimizer step each"
    for (name, a), b in zip(whole.model.state_dict().items(), accumulated.model.state_dict().values()):
        assert not torch.equal(a, model.state_dict()[name]), "the step changed the weights"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cpu_and_saves_the_scaler(tmp_path: Path, precision: str) -> None:
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path, MLP([1, 28, 28], 10), 16, f"trainer.precision={precision}", lr=0.01)
    first = trainer.train_epoch()["train/loss"]
    second = trainer.train_epoch()["train/loss"]
    assert torch.isfinite(torch.tensor([first, second])).all() and second < first
    state = trainer.state_dict()
    if precision == "16-mixed":  # float16 needs loss scaling, and its state is resumed
        assert state["grad_scaler"]["scale"] > 0
    else:
        assert state["grad_scaler"] is None
    assert all(t.dtype == torch.float32 for t in state["model"].values()), "weights stay float32"


def test_compiled_model_checkpoints_load_without_compile(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path, MLP([1, 28, 28], 10, hidden_sizes=[32]), 64, "trainer.compile=true")
    assert trainer.train_forward.model is not trainer.model
    assert trainer.eval_forward.model is trainer.model, "evaluation is not compiled: that would be a second compilation"
    assert torch.isfinite(torch.tensor(trainer.train_epoch()["train/loss"]))
    weights = trainer.state_dict()["model"]
    assert not any(key.startswith("_orig_mod.") for key in weights)
    plain = MLP([1, 28, 28], 10, hidden_sizes=[32])
    load_model_state(plain, weights, "compiled.pt")
    # Weights saved from a compiled module itself (prefixed keys) load as well.
    load_model_state(plain, {f"_orig_mod.{k}": v for k, v in weights.items()}, "prefixed.pt")


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["trainer.epochs=-1"]])
def test_help_config_printing_and_config_errors_never_import_torch(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True, text=True
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported
    assert "torch" not in imported and "torchvision" not in imported
    assert not (tmp_path / "saved").exists() or not list((tmp_path / "saved").rglob("*.pt"))


def test_benchmark_alternates_rounds_and_reports_each_ratio_as_median_min_max() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run as benchmark

    calls: list[str] = []
    work = {"a": lambda: calls.append("a") or 2, "b": lambda: calls.append("b") or 1}
    rates = benchmark.alternate(work, rounds=3, min_seconds=0.0, device=CPU)
    # One warm-up call each, then rounds taking turns at going first.
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"] and len(rates["a"]) == len(rates["b"]) == 3
    assert benchmark.ratio({"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}, "a", "b") == {"median": 3.0, "min": 2.0, "max": 4.0, "n": 3}

    images, targets = benchmark.load_images(REPO / "data")
    assert images.shape == (60_000, 1, 28, 28)
    result = benchmark.overhead("mlp", images, targets, CPU, steps=3, rounds=1, seconds=0.0)
    assert result["ratio"]["n"] == 1 and result["ratio"]["median"] > 0
    paths = benchmark.data_paths(images, targets, REPO / "data", CPU, batches_per_call=2, rounds=1, seconds=0.0)
    assert set(paths["samples_per_s"]) == {"in_memory", "dataloader_workers0", "dataloader_workers2"}
