"""A checkpoint is data: its stored config may only name classes of the kind each place
expects, and a changed field gets a clear error, through test.py and through resume=.

One tiny run trains per module; every case tampers a copy of its checkpoint. Each
payload below would create a file or folder named pwned* if it ran (see PAYLOADS), so
"nothing ran" is checked on disk, not only by the message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, run_cli, run_dirs
from src.trainer.checkpoint import load_checkpoint
from src.utils.errors import UserError

REFUSED = "Refusing the stored config"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("run")
    small = ["data.dataset.train_size=200", "data.dataset.test_size=100", "model.hidden_sizes=[16]"]
    result = run_cli("train.py", "data=synthetic", "trainer.epochs=1", *small, *FAST, cwd=cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir / "checkpoints" / "last.pt"


def tamper(checkpoint: Path, out: Path, config: dict[str, Any]) -> Path:
    """A copy of `checkpoint` at `out` with the stored config's dotted `config` keys set."""
    state = torch.load(checkpoint, weights_only=True)
    cfg = OmegaConf.create(state["config"])
    for key, value in config.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    state["config"] = OmegaConf.to_yaml(cfg)
    torch.save(state, out)
    return out


# Stored-config edits that would each create `pwned*` in the test's folder if built.
PAYLOADS = {
    "Path.write_text as the model": lambda pwned: {
        "model": {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [pwned]}, "x"]}
    },
    "builtins.open as the model": lambda pwned: {"model": {"_target_": "builtins.open", "file": pwned, "mode": "w"}},
    "shutil.copyfile as the loss": lambda pwned: {"loss": {"_target_": "shutil.copyfile", "src": __file__, "dst": pwned}},
    "os.makedirs as the model": lambda pwned: {"model": {"_target_": "os.makedirs", "name": pwned}},
    "os.symlink as the model": lambda pwned: {"model": {"_target_": "os.symlink", "src": "/", "dst": pwned}},
    "torch.save as the model": lambda pwned: {"model": {"_target_": "torch.save", "obj": 1, "f": pwned}},
    "a stdlib class as the model": lambda pwned: {"model": {"_target_": "logging.FileHandler", "filename": pwned}},
    "a torch class of another kind as the model": lambda pwned: {
        "model": {"_target_": "torch.utils.tensorboard.SummaryWriter", "log_dir": pwned}
    },
    "a function in a model's _args_": lambda pwned: {
        "model": {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "torch.save", "obj": 1, "f": pwned}]}
    },
    "a function in a list deep in the dataset's arguments": lambda pwned: {
        "data.dataset.input_shape": [1, {"_target_": "os.makedirs", "name": pwned}, 28]
    },
    "a function as a transform": lambda pwned: {
        "data.in_memory": False,
        "data.transforms": {"train": [], "eval": [{"_target_": "src.utils.io.atomic_write_json", "path": pwned, "data": 1}]},
    },
    "a function as the dataset": lambda pwned: {"data.dataset": {"_target_": "numpy.savez", "file": pwned}},
    "a class that is no Optimizer as the optimizer": lambda pwned: {
        "optimizer": {"_target_": "torch.utils.tensorboard.SummaryWriter", "log_dir": pwned}
    },
    "a function as data.task": lambda pwned: {"data.task": "os.makedirs", "data.num_outputs": pwned},
    "a class of another kind as data.task": lambda pwned: {"data.task": "torch.utils.tensorboard.SummaryWriter", "data.num_outputs": pwned},
    "the run_dir resolver in an interpolation": lambda pwned: {"data.name": "${run_dir:null," + pwned + "}"},
    "a module neither installed nor on PYTHONPATH": lambda pwned: {"model": {"_target_": "evilmod.Model"}},
}
# The message part naming why, for the cases that do not read `... is not <kind>`.
REASONS = {"the run_dir resolver in an interpolation": "is an interpolation"}
# Every payload goes through load_checkpoint (what both entry points call first); end to
# end, ten targets (functions, methods, classes of the wrong kind, nested ones) and an
# interpolation go through each of test.py and resume= (partly different ones): each CLI
# case is refused before anything is built, in a second or two.
THROUGH_TEST_PY = [
    "Path.write_text as the model",
    "torch.save as the model",
    "a stdlib class as the model",
    "a torch class of another kind as the model",
    "a function in a model's _args_",
    "a function in a list deep in the dataset's arguments",
    "a function as a transform",
    "a function as the dataset",
    "a class that is no Optimizer as the optimizer",
    "a class of another kind as data.task",
    "the run_dir resolver in an interpolation",
]
THROUGH_RESUME = [
    "Path.write_text as the model",
    "builtins.open as the model",
    "shutil.copyfile as the loss",
    "os.symlink as the model",
    "a stdlib class as the model",
    "a torch class of another kind as the model",
    "a function in a model's _args_",
    "a function as a transform",
    "a function as the dataset",
    "a function as data.task",
    "the run_dir resolver in an interpolation",
]


def payload_checkpoint(checkpoint: Path, tmp: Path, case: str) -> Path:
    # Importing evilmod would already write a file: a checkpoint must not choose modules to import.
    (tmp / "evilmod.py").write_text(f"open({str(tmp / 'pwned-on-import')!r}, 'w').close()\nclass Model: pass\n")
    return tamper(checkpoint, tmp / "tampered.pt", PAYLOADS[case](str(tmp / "pwned")))


def assert_refused(result: Any, tmp: Path, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert list(tmp.glob("pwned*")) == []
    assert run_dirs(tmp) == []  # the refused resume's fresh run folder is gone too


@pytest.mark.parametrize("case", THROUGH_TEST_PY)
def test_test_py_refuses_a_stored_config_that_names_code(tmp_path: Path, checkpoint: Path, case: str) -> None:
    tampered = payload_checkpoint(checkpoint, tmp_path, case)
    result = run_cli("test.py", f"checkpoint={tampered}", "device=cpu", cwd=tmp_path)
    assert_refused(result, tmp_path, REFUSED)
    assert REASONS.get(case, "is not a") in result.stderr
    assert not (tmp_path / "saved" / "evals").exists() or not any((tmp_path / "saved" / "evals").iterdir())


@pytest.mark.parametrize("case", THROUGH_RESUME)
def test_resume_refuses_a_stored_config_that_names_code(tmp_path: Path, checkpoint: Path, case: str) -> None:
    tampered = payload_checkpoint(checkpoint, tmp_path, case)
    result = run_cli("train.py", f"resume={tampered}", cwd=tmp_path)
    assert_refused(result, tmp_path, REFUSED)
    assert REASONS.get(case, "is not a") in result.stderr


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_every_payload_is_refused_before_anything_is_built(
    tmp_path: Path, checkpoint: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))  # evilmod is importable, but neither installed nor on PYTHONPATH
    monkeypatch.delenv("PYTHONPATH", raising=False)
    tampered = payload_checkpoint(checkpoint, tmp_path, case)
    for resuming in (False, True):
        with pytest.raises(UserError, match=REFUSED):
            load_checkpoint(tampered, resuming=resuming)
    assert list(tmp_path.glob("pwned*")) == []


def test_the_refusal_names_the_place_the_value_and_the_rule(tmp_path: Path, checkpoint: Path) -> None:
    tampered = payload_checkpoint(checkpoint, tmp_path, "a function in a model's _args_")
    with pytest.raises(UserError) as refused:
        load_checkpoint(tampered)
    message = str(refused.value)
    assert "model._args_[0]._target_='torch.save' is not an nn.Module or Dataset class (it is a function" in message
    assert "A checkpoint is data" in message and "\n" not in message


def test_classes_of_the_expected_kinds_are_accepted_at_any_depth(tmp_path: Path, checkpoint: Path) -> None:
    linear = {"_target_": "torch.nn.Linear", "in_features": 784, "out_features": 10}
    tampered = tamper(
        checkpoint,
        tmp_path / "nested.pt",
        {
            "model": {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "torch.nn.Flatten"}, linear]},
            "loss": {"_target_": "src.trainer.losses.MSELoss"},
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
            "scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True},
            "data.transforms": {"train": [{"_target_": "torchvision.transforms.v2.RandomHorizontalFlip"}], "eval": []},
        },
    )
    assert OmegaConf.create(load_checkpoint(tampered)["config"]).model._args_[1].out_features == 10


def without_model(config: str) -> str:
    cfg = OmegaConf.create(config)
    cfg.pop("model")
    return OmegaConf.to_yaml(cfg)


# Changed fields: (the checkpoint's state -> the fields to replace, what the message says).
FIELDS = {
    "config not YAML": (lambda state: {"config": "model: [unclosed"}, "its config is not valid YAML"),
    "config an int": (lambda state: {"config": 5}, "its config is 5, not the YAML text"),
    "config a list": (lambda state: {"config": "[1, 2]"}, "its config is a list"),
    "config without model": (lambda state: {"config": without_model(state["config"])}, "its config has no model section"),
    "epoch a string": (lambda state: {"epoch": "abc"}, "epoch='abc' is not an integer >= 0"),
    "epoch negative": (lambda state: {"epoch": -1}, "epoch=-1 is not an integer >= 0"),
    "step a float": (lambda state: {"step": 1.5}, "step=1.5 is not an integer >= 0"),
    "history a dict": (lambda state: {"history": {"epoch": 1}}, "history={'epoch': 1} is not a list"),
    "rng state of the wrong size": (
        lambda state: {"rng": {**state["rng"], "torch": torch.zeros(10, dtype=torch.uint8)}},
        "its rng state cannot be restored",
    ),
    "format_version 0": (lambda state: {"format_version": 0}, "format_version=0, and this version"),
    "format_version negative": (lambda state: {"format_version": -1}, "format_version=-1, and this version"),
    "format_version a string": (lambda state: {"format_version": "1"}, "format_version='1', and this version"),
    "format_version 99": (lambda state: {"format_version": 99}, "format_version=99, and this version"),
}
FIELDS_THROUGH_TEST_PY = ["config not YAML", "config an int", "epoch a string", "rng state of the wrong size", "format_version 0"]
FIELDS_THROUGH_RESUME = ["config without model", "history a dict", "format_version 99"]


def field_checkpoint(checkpoint: Path, tmp: Path, case: str) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    state.update(FIELDS[case][0](state))
    torch.save(state, tmp / "changed.pt")
    return tmp / "changed.pt"


@pytest.mark.parametrize("case", list(FIELDS))
def test_a_changed_field_is_named_when_loaded(tmp_path: Path, checkpoint: Path, case: str) -> None:
    changed = field_checkpoint(checkpoint, tmp_path, case)
    for resuming in (False, True):
        with pytest.raises(UserError, match=re.escape(FIELDS[case][1])):
            load_checkpoint(changed, resuming=resuming)


@pytest.mark.parametrize("case", FIELDS_THROUGH_TEST_PY)
def test_test_py_names_a_changed_field(tmp_path: Path, checkpoint: Path, case: str) -> None:
    changed = field_checkpoint(checkpoint, tmp_path, case)
    result = run_cli("test.py", f"checkpoint={changed}", "device=cpu", cwd=tmp_path)
    assert_refused(result, tmp_path, FIELDS[case][1])


@pytest.mark.parametrize("case", FIELDS_THROUGH_RESUME)
def test_resume_names_a_changed_field(tmp_path: Path, checkpoint: Path, case: str) -> None:
    changed = field_checkpoint(checkpoint, tmp_path, case)
    result = run_cli("train.py", f"resume={changed}", cwd=tmp_path)
    assert_refused(result, tmp_path, FIELDS[case][1])


@pytest.fixture(scope="module")
def mid_epoch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.pt of a run that ended at its 5th step, inside its first epoch of 3 batches
    of 64 (so its metric sums hold an unfinished group of losses)."""
    cwd = tmp_path_factory.mktemp("mid-epoch")
    small = ["data.dataset.train_size=300", "data.dataset.test_size=100", "model.hidden_sizes=[16]", "data.batch_size=16"]
    result = run_cli("train.py", "data=synthetic", "trainer.epochs=null", "trainer.max_steps=5", *small, *FAST, cwd=cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir / "checkpoints" / "last.pt"


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("loss_sum", "abc", "loss_sum is 'abc'"),
        ("group_losses", torch.zeros(2, 2), "group_losses is a tensor of shape (2, 2)"),
        ("group_sizes", [16, -1], "group_sizes is [16, -1]"),
    ],
)
def test_resume_names_a_changed_metric_sum_of_an_unfinished_epoch(
    tmp_path: Path, mid_epoch_checkpoint: Path, field: str, value: Any, named: str
) -> None:
    state = torch.load(mid_epoch_checkpoint, weights_only=True)
    assert state["batch_in_epoch"] == 5 and len(state["partial_epoch_metrics"]["group_sizes"]) == 5
    state["partial_epoch_metrics"][field] = value
    changed = tmp_path / "changed.pt"
    torch.save(state, changed)
    result = run_cli("train.py", f"resume={changed}", cwd=tmp_path)
    assert_refused(result, tmp_path, f"its partial_epoch_metrics cannot be restored ({named}")


def test_test_py_names_its_own_device_key(tmp_path: Path, checkpoint: Path) -> None:
    result = run_cli("test.py", f"checkpoint={checkpoint}", "device=banana", cwd=tmp_path)
    assert result.returncode == 2
    assert "device='banana' is not a device name" in result.stderr and "trainer.device" not in result.stderr


def test_test_py_prints_results_it_cannot_save_beside_the_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    copy = folder / "last.pt"
    copy.write_bytes(checkpoint.read_bytes())
    if os.geteuid() == 0:  # root writes into a 0o555 folder: make the JSON's path one it cannot replace
        (folder / "last.test.json").mkdir()
    else:
        folder.chmod(0o555)
    try:
        result = run_cli("test.py", f"checkpoint={copy}", "device=cpu", cwd=tmp_path)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert "test/accuracy" in result.stdout and "Confusion matrix" in result.stdout
    output = result.stdout + result.stderr
    assert "Could not write" in output and "last.test.json" in output and "Traceback" not in output
    assert sorted(p.name for p in folder.iterdir()) == sorted(["last.pt"] + (["last.test.json"] if os.geteuid() == 0 else []))


def test_a_checkpoint_never_chooses_where_logs_go_or_what_is_downloaded(tmp_path: Path, checkpoint: Path) -> None:
    # Classes of the right kind, with arguments that would write outside the run: a CSV
    # logger rewriting a file of yours, and a dataset downloading into a folder of its choice.
    victim = tmp_path / "precious.txt"
    victim.write_text("precious user data\n")
    logger = {"logger.csv": {"_target_": "src.trainer.loggers.csv_file.CSVLogger", "filename": str(victim)}}
    resumed = run_cli("train.py", f"resume={tamper(checkpoint, tmp_path / 'logger.pt', logger)}", "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert victim.read_text() == "precious user data\n", "a resume logs to its own command line's loggers"

    download = {"data.dataset": {"_target_": "torchvision.datasets.FashionMNIST", "root": str(tmp_path / "pwned"), "download": True}}
    evaluated = run_cli("test.py", f"checkpoint={tamper(checkpoint, tmp_path / 'download.pt', download)}", "device=cpu", cwd=tmp_path)
    assert evaluated.returncode == 2 and "Traceback" not in evaluated.stderr
    assert not (tmp_path / "pwned").exists(), "a checkpoint never downloads"
