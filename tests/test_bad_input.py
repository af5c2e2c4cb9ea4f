"""Bad input gets one clear paragraph, a non-zero exit and no half-written run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAST, run_cli, run_dirs
from src.models.mlp import MLP
from src.trainer.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from src.utils.errors import UserError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=-1", "trainer.epochs=-1"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("optimizer.lr=abc", "optimizer.lr='abc'"),
        ("trainer.monitor=val/acc", "val/accuracy"),
        ("data.task=ranking", "Invalid value data.task='ranking'"),
        ("trainer.progress=fancy", "rich, tqdm, none"),
        ("data.val_split=1.5", "a fraction in [0, 1)"),
        ("optimizer.lr=1e300", "optimizer.lr=1e+300"),
        ("optimizer.lr=inf", "optimizer.lr=inf"),
        ("optimizer.lr=nan", "optimizer.lr=nan"),
        ("scheduler=step scheduler.step_size=0", "scheduler.step_size=0"),
        ("scheduler=step scheduler.step_size=-2", "scheduler.step_size=-2"),
        ("print_config=all", "print_config='all': expected one of short, full"),
    ],
)
def test_bad_value_is_named_and_nothing_is_written(tmp_path: Path, override: str, message: str) -> None:
    result = run_cli("train.py", "data=synthetic", *FAST, *override.split(), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [("model=nope", "Available options in 'model'"), ("trainer.epoch=3", "Key 'epoch' is not in struct")],
)
def test_unknown_choice_or_key_gets_hydras_help(tmp_path: Path, override: str, message: str) -> None:
    result = run_cli("train.py", override, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert run_dirs(tmp_path) == []


def test_value_rejected_by_the_component_names_the_group(tmp_path: Path) -> None:
    result = run_cli("train.py", "data=synthetic", *FAST, "model.activation=Foo", cwd=tmp_path)
    assert result.returncode == 2
    assert "Could not build the model" in result.stderr and "activation='Foo'" in result.stderr
    assert run_dirs(tmp_path) == []


def good_checkpoint(tmp: Path) -> Path:
    """A small checkpoint in this framework's format, written the way the trainer does."""
    model = MLP(input_shape=[1, 4, 4], num_outputs=3, hidden_sizes=[8])
    config = """
seed: 0
data: {name: synthetic, dataset: {_target_: src.data.synthetic.SyntheticImages}}
model: {_target_: src.models.mlp.MLP, input_shape: [1, 4, 4], num_outputs: 3, hidden_sizes: [8]}
loss: {_target_: torch.nn.CrossEntropyLoss}
optimizer: {_target_: torch.optim.Adam, _partial_: true}
trainer: {}
"""
    state = {"format_version": 1, "model": model.state_dict(), "config": config, "epoch": 1, "step": 5}
    path = tmp / "good.pt"
    save_checkpoint(state, path)
    return path


class Payload:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def bad_checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    good_path = good_checkpoint(tmp)
    good = torch.load(good_path, weights_only=True)
    files = {}

    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good_path.read_bytes()[: good_path.stat().st_size // 2])
    files["truncated"] = (truncated, "not a readable checkpoint")

    text = tmp / "notes.pt"
    text.write_text("just some text")
    files["not a checkpoint"] = (text, "not a readable checkpoint")

    stream = tmp / "stream.pt"
    stream.write_bytes(b"\x80\x04garbage that is no pickle")  # a pickle header, then nonsense
    files["broken pickle"] = (stream, "not a readable checkpoint")

    other = tmp / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    files["foreign dict"] = (other, "not a checkpoint of this framework")

    newer = tmp / "newer.pt"
    torch.save({**good, "format_version": 99}, newer)
    files["newer format"] = (newer, "format_version=99")

    evil = tmp / "evil.pt"
    torch.save({**good, "history": Payload(str(tmp / "pwned"))}, evil)
    files["pickle payload"] = (evil, "Refusing to load")

    files["missing"] = (tmp / "nope.pt", "Checkpoint not found")
    return files


@pytest.mark.parametrize(
    "case", ["truncated", "not a checkpoint", "broken pickle", "foreign dict", "newer format", "pickle payload", "missing"]
)
def test_broken_checkpoint_gets_a_clear_error_and_never_runs_code(tmp_path: Path, case: str) -> None:
    path, message = bad_checkpoints(tmp_path)[case]
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_fit_name_the_keys_and_shapes(tmp_path: Path) -> None:
    state = load_checkpoint(good_checkpoint(tmp_path))
    wider = MLP(input_shape=[1, 4, 4], num_outputs=3, hidden_sizes=[16])
    with pytest.raises(UserError, match=r"shape mismatches net\.1\.weight: checkpoint \(8, 16\) vs model \(16, 16\)"):
        load_model_state(wider, state["model"], "good.pt")
    deeper = MLP(input_shape=[1, 4, 4], num_outputs=3, hidden_sizes=[8, 8])
    with pytest.raises(UserError, match=r"missing keys net\.7\.weight"):
        load_model_state(deeper, state["model"], "good.pt")


@pytest.mark.parametrize("case", ["pickle payload", "truncated"])
def test_test_py_reports_a_broken_checkpoint_in_one_paragraph(tmp_path: Path, case: str) -> None:
    path, message = bad_checkpoints(tmp_path)[case]
    result = run_cli("test.py", f"checkpoint={path}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "saved" / "evals").exists() or not any((tmp_path / "saved" / "evals").iterdir())


def test_missing_checkpoint_argument(tmp_path: Path) -> None:
    result = run_cli("test.py", cwd=tmp_path)
    assert result.returncode == 2 and "checkpoint=PATH" in result.stderr
