"""Shared helpers: run the real CLI in a subprocess, and write tiny datasets to tmp dirs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Small and fast everywhere: CPU, no progress bar, a few epochs.
FAST = ["trainer.device=cpu", "trainer.progress=none"]
# One thread in pytest's own processes too, which train the in-process tests' models
# beside another worker (see cli_env).
torch.set_num_threads(1)


def cli_env(extra: dict | None = None) -> dict:
    # One thread per run: the models are tiny, and pytest-xdist already runs one
    # process per core (more threads would only spin against each other).
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(extra or {})}


def run_cli(script: str, *overrides: str, cwd: Path, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <script> <overrides>` from `cwd` (so saved/ lands there)."""
    full_env = cli_env(env)
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_fault(script: str, fault: str, *overrides: str) -> list[str]:
    """The command line of the CLI with `fault` (Python source) patching the child
    process first: a kill -9, a full disk or a signal injected at an exact point."""
    code = "\n".join(
        [
            "import runpy, sys",
            f"sys.path.insert(0, {str(REPO)!r})",
            textwrap.dedent(fault),
            f"sys.argv = [{str(REPO / script)!r}, *sys.argv[1:]]",
            "runpy.run_path(sys.argv[0], run_name='__main__')",
        ]
    )
    return [sys.executable, "-c", code, *overrides]


def run_with_fault(script: str, fault: str, *overrides: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the CLI like `run_cli`, patched by `fault` (see `with_fault`)."""
    env = cli_env()
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(with_fault(script, fault, *overrides), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def readme_python_block(containing: str) -> str:
    """The README's ```python block that holds `containing`: tests run the README's code as written."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return block


def run_dirs(cwd: Path) -> list[Path]:
    """Every run folder (the one holding .hydra/) under cwd/saved/runs."""
    return sorted(p.parent for p in (cwd / "saved" / "runs").glob("*/*/.hydra"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file the way MNIST's originals are laid out (uint8 data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = {3: 0x00000803, 1: 0x00000801}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_like(root: Path, folder: str = "FashionMNIST", train: int = 600, test: int = 200, seed: int = 0) -> Path:
    """Tiny 28x28 IDX files in `<root>/<folder>/raw/`, exactly where torchvision looks.

    Class k is a bright 8x8 square at one of ten positions plus noise: easy to learn.
    """
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 60, (count, 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, 4 + row * 12 : 12 + row * 12, 1 + col * 5 : 9 + col * 5] += 180
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.clip(images, 0, 255))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist_like(tmp_path_factory.mktemp("datasets"))


def trainer_cfg(*overrides: str):
    """The `trainer` config group as train.yaml composes it, for a Trainer built in the test."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.progress=none", "trainer.monitor=train/loss", *overrides])
    return cfg.trainer


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_training(a: Path, b: Path) -> None:
    """Two last.pt files hold bitwise-identical weights, optimizer state and metrics."""
    sa, sb = load(a), load(b)
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key
    assert sa["scheduler"] == sb["scheduler"]
    assert sa["step"] == sb["step"] and sa["epoch"] == sb["epoch"]
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(sa["history"]) == strip(sb["history"])


def start_cli(script: str, *overrides: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start the CLI in the background, stdout as a line-by-line text pipe."""
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen, marker: str) -> str:
    """Read the process's stdout until a line containing `marker`; returns what was read."""
    seen = []
    for line in process.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} never appeared; output:\n{''.join(seen)}\n{process.stderr.read()}")  # type: ignore[union-attr]
