"""Bad input gets one clear paragraph, a non-zero exit and no half-written run folder."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import FAST, run_cli, run_dirs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=-1", "trainer.epochs=-1"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("optimizer.lr=abc", "optimizer.lr='abc'"),
        ("trainer.monitor=val/acc", "val/accuracy"),
        ("trainer.progress=fancy", "rich, tqdm, none"),
        ("data.val_split=1.5", "a fraction in [0, 1)"),
    ],
)
def test_bad_value_is_named_and_nothing_is_written(tmp_path: Path, override: str, message: str) -> None:
    result = run_cli("train.py", "data=synthetic", *FAST, override, cwd=tmp_path)
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("trained")
    result = run_cli("train.py", "data=synthetic", *FAST, "trainer.epochs=1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return run_dirs(cwd)[0] / "checkpoints" / "best.pt"


class Payload:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def bad_checkpoints(trained: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    good = torch.load(trained, weights_only=True)
    files = {}

    truncated = tmp / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    files["truncated"] = (truncated, "not a readable checkpoint")

    text = tmp / "notes.pt"
    text.write_text("just some text")
    files["not a checkpoint"] = (text, "not a readable checkpoint")

    other = tmp / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    files["foreign dict"] = (other, "not a checkpoint of this framework")

    newer = tmp / "newer.pt"
    torch.save({**good, "format_version": 99}, newer)
    files["newer format"] = (newer, "format_version=99")

    mismatch = tmp / "mismatch.pt"
    weights = dict(good["model"])
    first = next(iter(weights))
    weights[first] = torch.zeros(3, 3)
    weights["extra.weight"] = torch.zeros(1)
    torch.save({**good, "model": weights}, mismatch)
    files["shape mismatch"] = (mismatch, "shape mismatches")

    evil = tmp / "evil.pt"
    torch.save({**good, "history": Payload(str(tmp / "pwned"))}, evil)
    files["pickle payload"] = (evil, "Refusing to load")
    return files


def test_broken_checkpoints_get_clear_errors_and_never_run_code(tmp_path: Path, trained: Path) -> None:
    for name, (path, message) in bad_checkpoints(trained, tmp_path).items():
        result = run_cli("test.py", f"checkpoint={path}", "device=cpu", cwd=tmp_path)
        assert result.returncode == 2, name
        assert message in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "saved" / "evals").exists() or not any((tmp_path / "saved" / "evals").iterdir())


def test_missing_checkpoint_argument(tmp_path: Path) -> None:
    result = run_cli("test.py", cwd=tmp_path)
    assert result.returncode == 2 and "checkpoint=PATH" in result.stderr
