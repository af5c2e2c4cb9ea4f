"""The default dataset, MNIST, ships with the repository and trains offline from any folder."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from conftest import FAST, REPO, run_cli, run_dirs
from src.data.bundled import MNIST_MD5, unpack_mnist
from src.utils.errors import UserError

BUNDLED = REPO / "data" / "MNIST" / "raw"


def test_the_default_run_learns_the_bundled_mnist_from_any_folder(tmp_path: Path) -> None:
    # No data= and no data.root=: the repository's own copy, found from tmp_path, offline.
    result = run_cli("train.py", *FAST, "trainer.epochs=1", "trainer.limit_batches=40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.parent.name == "mnist-mlp"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"]["val/accuracy"] > 0.8, "40 batches of real digits: far above chance (0.1)"
    for name, md5 in MNIST_MD5.items():  # unpacked next to the .gz, byte for byte the original
        assert hashlib.md5((BUNDLED / name).read_bytes()).hexdigest() == md5


def test_a_damaged_bundled_file_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the labels"))
    result = run_cli("train.py", *FAST, f"data.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train-labels-idx1-ubyte.gz unpacks to a file whose md5" in result.stderr
    assert sorted(p.name for p in raw.iterdir()) == ["train-labels-idx1-ubyte.gz"]
    assert run_dirs(tmp_path) == []


def test_a_folder_it_cannot_write_to_gets_a_message_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes((BUNDLED / "t10k-labels-idx1-ubyte.gz").read_bytes())

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("src.utils.io.tempfile.mkstemp", read_only)  # as in a read-only checkout (root may write anywhere)
    with pytest.raises(UserError, match=f"into {raw}/: Permission denied.*gunzip -k"):
        unpack_mnist(tmp_path)
    assert not (raw / "t10k-labels-idx1-ubyte").exists()


def test_the_mnist_reader_gives_torchvisions_tensors_and_falls_back_to_it(tmp_path: Path) -> None:
    import torch
    import torchvision.datasets

    from src.data.mnist import MNIST

    unpack_mnist(REPO / "data")
    ours, theirs = MNIST(REPO / "data", train=False), torchvision.datasets.MNIST(str(REPO / "data"), train=False)
    assert torch.equal(ours.data, theirs.data) and torch.equal(ours.targets, theirs.targets)
    assert ours.classes == theirs.classes and ours[3][1] == theirs[3][1] and ours[3][0].size == (28, 28)
    # Files missing: torchvision's MNIST is asked (to download them, or to say why not).
    with pytest.raises(RuntimeError, match="Dataset not found"):
        MNIST(tmp_path, train=False, download=False)
