"""Models and datasets written the way users write them train with the default settings."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, run_cli, run_dirs
from src.models.cnn import CNN
from src.trainer.forward import use_channels_last
from src.utils.errors import UserError
from template_models import MnistModel

CPU = torch.device("cpu")
MNIST_SHAPE = (1, 28, 28)


def template_project(tmp_path: Path) -> Path:
    """A project folder whose conf/model/template.yaml names tests/template_models.MnistModel."""
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "template.yaml").write_text(
        "_target_: template_models.MnistModel\nnum_classes: ${data.num_outputs}\n"
    )
    return tmp_path


def train_template(project: Path, fashion_root: Path, *overrides: str):
    return run_cli(
        "train.py", "--config-dir", "conf", "model=template", "data=fashion_mnist", f"data.root={fashion_root}",
        *FAST, "trainer.epochs=1", *overrides, cwd=project, env={"PYTHONPATH": str(REPO / "tests")},
    )


def test_a_model_that_flattens_with_view_trains_and_evaluates_by_default(tmp_path: Path, fashion_root: Path) -> None:
    project = template_project(tmp_path)
    result = train_template(project, fashion_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "channels-last stays off, since MnistModel fails in it" in result.stdout
    assert "view size is not compatible" in result.stdout
    (run_dir,) = run_dirs(project)
    best = run_dir / "checkpoints" / "best.pt"
    result = run_cli("test.py", f"checkpoint={best}", "device=cpu", cwd=project, env={"PYTHONPATH": str(REPO / "tests")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test/accuracy" in result.stdout


def test_loss_nll_trains_a_model_of_its_own(tmp_path: Path, fashion_root: Path) -> None:
    # pytorch-template's model ends in log_softmax for its nll_loss; the loss applies
    # log_softmax itself, which leaves log-probabilities as they are.
    project = template_project(tmp_path)
    result = train_template(project, fashion_root, "loss=nll")
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = run_dirs(project)
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert math.isfinite(test["test/loss"]) and test["test/accuracy"] > 0.1


def test_asking_for_channels_last_on_such_a_model_names_the_cause(tmp_path: Path, fashion_root: Path) -> None:
    project = template_project(tmp_path)
    result = train_template(project, fashion_root, "trainer.channels_last=true")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for part in ("MnistModel", "`.view()` after a convolution", "torch.flatten", "trainer.channels_last=false"):
        assert part in result.stderr
    assert run_dirs(project) == []


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_the_channels_last_check_leaves_no_trace(precision: str) -> None:
    """The dry step runs in train mode: batch norm updates its statistics and dropout
    draws random numbers. Both are put back, so a run is bitwise the same with it."""
    torch.manual_seed(0)
    model = CNN(MNIST_SHAPE, 10, dropout=0.5)
    weights, rng = state(model), torch.get_rng_state()
    assert use_channels_last(model, "auto", MNIST_SHAPE, CPU, precision)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


def test_a_model_that_fails_in_channels_last_keeps_the_default_format_untouched() -> None:
    torch.manual_seed(0)
    model = MnistModel().eval()
    weights, rng = state(model), torch.get_rng_state()
    assert not use_channels_last(model, "auto", MNIST_SHAPE, CPU)
    assert model.conv1.weight.is_contiguous() and not model.training
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(UserError, match="trainer.channels_last=true"):
        use_channels_last(model, True, MNIST_SHAPE, CPU)
    assert not use_channels_last(model, False, MNIST_SHAPE, CPU)


@pytest.mark.parametrize(("model", "input_shape"), [(CNN(MNIST_SHAPE, 10), (784,)), (torch.nn.Flatten(), MNIST_SHAPE)])
def test_channels_last_auto_costs_nothing_without_images_and_convolutions(model: torch.nn.Module, input_shape: tuple) -> None:
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(args))
    assert not use_channels_last(model, "auto", input_shape, CPU)
    assert calls == []


def test_a_datasets_own_transform_is_applied_not_skipped(tmp_path: Path, fashion_root: Path) -> None:
    """torchvision's `transform=` runs in the dataset's __getitem__, which only the
    DataLoader path calls: `data.in_memory=auto` takes that path for it."""
    pad = "+data.dataset.transform={_target_: torchvision.transforms.Pad, padding: 2}"
    args = ("data=fashion_mnist", f"data.root={fashion_root}", "model=cnn", "data.input_shape=[1,32,32]", pad, *FAST)
    result = run_cli("train.py", *args, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DataLoader data path" in result.stdout
    result = run_cli("train.py", *args, "data.in_memory=true", cwd=tmp_path)
    assert result.returncode == 2
    assert "has no `transform` of its own" in result.stderr and "Traceback" not in result.stderr
    assert len(run_dirs(tmp_path)) == 1, "the refused run left no folder"
