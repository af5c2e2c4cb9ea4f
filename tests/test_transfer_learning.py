"""Fine-tuning a torchvision backbone from local weights, with a frozen backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from src.data.batches import InMemoryBatches, Normalize
from src.data.builder import DataSplits
from src.data.synthetic import SyntheticImages
from src.models.pretrained import TorchvisionModel
from src.train import parameter_groups
from src.trainer.tasks.classification import Classification
from src.trainer.trainer import Trainer
from src.utils.errors import UserError
from conftest import FAST, load, run_cli, run_dirs
from test_speed_features import trainer_cfg


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' checkpoint as torchvision would ship it (1000-class head)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    return path


def test_frozen_backbone_stays_fixed_while_the_new_head_learns(tmp_path: Path, local_weights: Path) -> None:
    model = TorchvisionModel("mobilenet_v3_small", [1, 28, 28], 10, weights=str(local_weights), freeze="backbone")
    pretrained = torch.load(local_weights, weights_only=True)
    assert torch.equal(model.net.features[1].block[0][0].weight, pretrained["features.1.block.0.0.weight"])
    assert model.net.classifier[3].out_features == 10 and model.net.features[0][0].in_channels == 1

    groups = parameter_groups(model)
    optimizer = torch.optim.Adam(groups, lr=1e-2)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 1024 * 10 + 10, "only the head"
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    data = SyntheticImages(train=True, train_size=64)
    batches = InMemoryBatches(data.data.unsqueeze(1), data.targets, 16, True, 0, Normalize([0.5], [0.25], torch.device("cpu")))
    trainer = Trainer(
        model=model, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, scheduler=None,
        data=DataSplits(train=batches, val=None, test=None, in_memory=True), cfg=trainer_cfg(),
        task=Classification(10), device=torch.device("cpu"), run_dir=tmp_path,
    )
    trainer.train_epoch()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == name.startswith("net.classifier.3."), name


def test_backbone_can_learn_slower_than_the_head() -> None:
    model = TorchvisionModel("resnet18", [3, 32, 32], 10, backbone_lr_scale=0.1)
    head, backbone = parameter_groups(model)
    assert head["lr_scale"] == 1.0 and backbone["lr_scale"] == 0.1
    assert len(head["params"]) == 2  # fc.weight, fc.bias


def test_bad_transfer_settings_are_explained(local_weights: Path) -> None:
    with pytest.raises(UserError, match="not a torchvision model"):
        TorchvisionModel("resnet9000", [3, 32, 32], 10)
    with pytest.raises(UserError, match="not a weights name of resnet18"):
        TorchvisionModel("resnet18", [3, 32, 32], 10, weights="FOO")
    with pytest.raises(UserError, match="is not a file"):
        TorchvisionModel("resnet18", [3, 32, 32], 10, weights="missing/weights.pth")
    with pytest.raises(UserError, match="do not fit this model"):
        TorchvisionModel("resnet18", [3, 32, 32], 10, weights=str(local_weights))
    with pytest.raises(UserError, match="unknown modules \\['layer9'\\]"):
        TorchvisionModel("resnet18", [3, 32, 32], 10, freeze=["layer9"])


def test_a_resume_with_a_new_lr_keeps_the_backbone_slower(tmp_path: Path) -> None:
    small = ["data=synthetic", "data.dataset.train_size=100", "data.dataset.test_size=50", *FAST]
    slow_backbone = ["model=torchvision", "model.builder=mobilenet_v3_small", "model.backbone_lr_scale=0.1"]
    result = run_cli("train.py", *small, *slow_backbone, "optimizer.lr=1e-3", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    assert [g["lr"] for g in load(last)["optimizer"]["param_groups"]] == pytest.approx([1e-3, 1e-4]), "head, backbone"

    result = run_cli("train.py", f"resume={last}", "optimizer.lr=1e-4", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [g["lr"] for g in load(last)["optimizer"]["param_groups"]] == pytest.approx([1e-4, 1e-5])
