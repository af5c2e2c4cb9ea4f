"""Every config choice composes and builds; user code plugs in by `_target_` alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import FAST, REPO, run_cli, run_dirs
from src.trainer.schedulers import build_scheduler
from src.trainer.tasks import get_task
from src.utils.config import register_resolvers
from src.utils.errors import UserError

CONFIGS = REPO / "configs"
register_resolvers()  # as train.py does: the configs use them (a table's num_outputs)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# Dataset options that need values from the user (a CSV's path; its width is read from the file).
REQUIRED = {"csv": ["data.path=table.csv", "data.input_shape=[5]"], "image_folder": ["data.root=photos", "data.num_classes=2"]}


@pytest.mark.parametrize("data", choices("data"))
@pytest.mark.parametrize("model", choices("model"))
def test_every_model_fits_every_dataset_shape(data: str, model: str) -> None:
    if data == "csv" and model not in ("mlp", "linear"):
        pytest.skip("a convnet needs images, not rows of features")
    cfg = compose_train(f"data={data}", f"model={model}", *REQUIRED.get(data, []))
    net = instantiate(cfg.model)
    output = net(torch.zeros(2, *cfg.data.input_shape))
    assert output.shape == (2, cfg.data.num_outputs)


@pytest.mark.parametrize("loss", choices("loss"))
def test_every_loss_takes_class_indices(loss: str) -> None:
    cfg = compose_train("data=synthetic", f"loss={loss}")
    net, loss_fn = instantiate(cfg.model), get_task(cfg.data).loss(instantiate(cfg.loss))
    outputs, targets = net(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])
    value = loss_fn(outputs, targets)
    assert value.ndim == 0 and torch.isfinite(value)
    if loss == "nll":  # on the model's logits, or on log-probabilities, which log_softmax leaves as they are
        assert value.item() == pytest.approx(torch.nn.functional.cross_entropy(outputs, targets).item())
        assert loss_fn(outputs.log_softmax(dim=1), targets).item() == pytest.approx(value.item())


@pytest.mark.parametrize("optimizer", choices("optimizer"))
@pytest.mark.parametrize("scheduler", choices("scheduler"))
def test_every_optimizer_and_scheduler_builds(optimizer: str, scheduler: str) -> None:
    cfg = compose_train("data=synthetic", f"optimizer={optimizer}", f"scheduler={scheduler}")
    net = instantiate(cfg.model)
    opt = instantiate(cfg.optimizer)(net.parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    if scheduler == "none":
        assert not cfg.scheduler
    elif scheduler == "onecycle" and optimizer == "adadelta":  # no momentum to cycle: the error says which value
        with pytest.raises(UserError, match="cycle_momentum"):
            build_scheduler(cfg.scheduler, opt, run_steps=1000)
    else:  # as train.py builds it: a per-step schedule gets the run's steps (here 1000)
        sched, interval = build_scheduler(cfg.scheduler, opt, run_steps=1000)
        assert interval == ("step" if scheduler in ("warmup_cosine", "onecycle") else "epoch")
        opt.step()
        sched.step(1.0) if scheduler == "plateau" else sched.step()


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_every_experiment_composes_and_builds(experiment: str) -> None:
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.name.startswith(experiment) and cfg.trainer.monitor.startswith("val/")
    if "weights" in cfg.model:  # pretrained weights would be downloaded: build the same net without them
        cfg.model.weights = None
    net = instantiate(cfg.model).eval()
    assert net(torch.zeros(1, *cfg.data.input_shape)).shape == (1, cfg.data.num_outputs)


@pytest.mark.parametrize("debug", choices("debug"))
def test_every_debug_preset_composes(debug: str) -> None:
    cfg = compose_train(f"debug={debug}")
    assert cfg.name == f"debug-{debug}" and cfg.trainer.epochs >= 1


def test_synthetic_dataset_is_seeded_and_learnable_shaped() -> None:
    cfg = compose_train("data=synthetic")
    a, b = instantiate(cfg.data.dataset, train=True), instantiate(cfg.data.dataset, train=True)
    assert torch.equal(a.data, b.data) and a.data.dtype == torch.uint8
    assert a.data.shape == (2000, 28, 28) and len(instantiate(cfg.data.dataset, train=False)) == 500


def test_your_own_model_and_dataset_plug_in_by_target(tmp_path: Path) -> None:
    """examples/custom_project: code outside src/ and YAML outside configs/."""
    project = tmp_path / "custom_project"
    shutil.copytree(REPO / "examples" / "custom_project", project)
    result = run_cli(
        "train.py", "--config-dir", "conf", "model=tiny", "data=bars", *FAST, "trainer.epochs=3",
        cwd=project, env={"PYTHONPATH": str(project)},
    )
    assert result.returncode == 0, result.stderr
    assert "TinyNet" in result.stdout and "DataLoader data path" in result.stdout
    (run_dir,) = run_dirs(project)
    assert run_dir.parent.name == "bars-tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"]["val/accuracy"] > 0.9, "the example's model learns its dataset (chance is 0.5)"
    best = run_dir / "checkpoints" / "best.pt"
    result = run_cli("test.py", f"checkpoint={best}", "device=cpu", cwd=project, env={"PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stderr
    assert "test/accuracy" in result.stdout
