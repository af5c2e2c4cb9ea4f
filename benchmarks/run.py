"""Speed benchmarks, measured side by side in one process run so machine noise cancels.

    python benchmarks/run.py --quick --out saved/benchmark.json      # under 2 minutes on 2 CPU cores
    python benchmarks/run.py --data-root ../shared/data              # the full table

Sections (each printed as rows of one table and written to the JSON file):
- overhead: the Trainer's epoch loop vs a minimal hand-written loop (same model
  initialisation, same in-memory batches, same number of steps); `overhead_ratio` is
  Trainer steps/s divided by the hand-written loop's. Rounds alternate, medians count.
- data path: the same hand-written loop fed by the in-memory path vs torchvision's
  MNIST + ToTensor + DataLoader (num_workers 0 and 2); `data_path_ratio` is in-memory
  samples/s over DataLoader(num_workers=0) samples/s (mlp, batch 128).
- time to accuracy: wall seconds from process start to the end of a `train.py`
  run of the cnn on MNIST, with its test accuracy, and seconds per epoch of mlp and cnn
  (real MNIST when --data-root holds it, else synthetic data).
- startup: `train.py --help`, and process start to the first optimizer step.
- precision and compile (full run, or any run on a GPU): Trainer steps/s of the cnn
  with precision 32 / bf16-mixed and torch.compile off / on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

from src.data.batches import InMemoryBatches, Normalize  # noqa: E402
from src.data.builder import DataSplits  # noqa: E402
from src.models.cnn import CNN  # noqa: E402
from src.models.mlp import MLP  # noqa: E402
from src.trainer.forward import to_memory_format  # noqa: E402
from src.trainer.tasks.classification import Classification  # noqa: E402
from src.trainer.trainer import Trainer  # noqa: E402

MNIST_MEAN, MNIST_STD = [0.1307], [0.3081]


def load_images(data_root: Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """MNIST's 60,000 training images as uint8 (N, 1, 28, 28) when present, else synthetic."""
    if data_root is not None and (data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        from torchvision.datasets import MNIST

        dataset = MNIST(str(data_root), train=True, download=False)
        return dataset.data.unsqueeze(1), dataset.targets, "mnist"
    from src.data.synthetic import SyntheticImages

    dataset = SyntheticImages(train=True, train_size=60_000)
    return dataset.data.unsqueeze(1), dataset.targets, "synthetic"


def trainer_config(**overrides: Any):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.progress=none", "trainer.monitor=train/loss"])
    for key, value in overrides.items():
        cfg.trainer[key] = value
    return cfg.trainer


def hand_written_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any, channels_last: bool) -> int:
    """The loop people write by hand (as in pytorch-template): no metrics, no checks.
    Returns the number of steps it took."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    steps = 0
    for inputs, targets in batches:
        loss = criterion(model(to_memory_format(inputs, channels_last)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def overhead(make_model, images, targets, device: torch.device, steps: int, rounds: int, **trainer_options: Any) -> dict[str, float]:
    """Steps/s of Trainer.train_epoch and of the hand-written loop, alternating rounds.

    The loops take turns training one model for `rounds` epochs of `steps` batches
    each; round 0 warms up (allocations, the TensorBoard writer, compilation). Each
    rate counts the steps its loop took; `hand_steps` and `trainer_steps` are their
    totals over the measured rounds.
    """
    batch_size = 128
    count = steps * batch_size
    normalize = Normalize(MNIST_MEAN, MNIST_STD, device)
    batches = InMemoryBatches(images[:count].to(device), targets[:count].to(device), batch_size, True, 0, normalize)
    torch.manual_seed(0)
    model = make_model().to(device)
    results: dict[str, list[float]] = {"hand": [], "trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model=model,
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
            scheduler=None,
            data=DataSplits(train=batches, val=None, test=None, in_memory=True, input_shape=tuple(images.shape[1:])),
            cfg=trainer_config(**trainer_options),
            task=Classification(10),
            device=device,
            run_dir=Path(tmp),
            )
        # Both loops train the very same model and optimizer objects: two copies would
        # sit at different memory addresses, which alone can make one a few percent
        # faster than the other for the whole process.
        hand_model = trainer.train_forward.model

        def trainer_epoch() -> int:
            before = trainer.step
            trainer.train_epoch()
            return trainer.step - before

        loops = {
            "hand": lambda: hand_written_epoch(hand_model, trainer.optimizer, batches, trainer.train_forward.channels_last),
            "trainer": trainer_epoch,
        }
        taken = {"hand": 0, "trainer": 0}
        for round_ in range(rounds + 1):
            # Alternate which loop goes first, so neither always inherits a warm cache.
            for kind in ("hand", "trainer") if round_ % 2 else ("trainer", "hand"):
                synchronize(device)
                started = time.perf_counter()
                steps_taken = loops[kind]()
                synchronize(device)
                if round_:
                    results[kind].append(steps_taken / (time.perf_counter() - started))
                    taken[kind] += steps_taken
        trainer.close()
    hand, ours = statistics.median(results["hand"]), statistics.median(results["trainer"])
    # The ratio is the median of each round's own ratio: the two loops of a round run
    # back to back, so a slow spell of the machine slows both.
    ratio = statistics.median(t / h for t, h in zip(results["trainer"], results["hand"]))
    return {"hand_steps_per_s": hand, "trainer_steps_per_s": ours, "ratio": ratio, "hand_steps": taken["hand"], "trainer_steps": taken["trainer"]}


def data_paths(images, targets, data_root: Path | None, source: str, device: torch.device, batches_count: int) -> dict[str, float]:
    """Samples/s of the same training loop fed by each data path."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    batch_size = 128
    count = batches_count * batch_size
    normalize = Normalize(MNIST_MEAN, MNIST_STD, device)
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    if source == "mnist":
        from torchvision.datasets import MNIST

        dataset: Any = MNIST(str(data_root), train=True, download=False, transform=to_tensor)
    else:  # the same ToTensor path over numpy images, as torchvision's datasets hand PIL images to it
        dataset = _NumpyImages(images.squeeze(1).numpy(), targets, to_tensor)

    def loader_batches(workers: int):
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        )
        for i, (x, y) in enumerate(loader):
            if i == batches_count:
                break
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    paths = {
        "in_memory": lambda: InMemoryBatches(images[:count].to(device), targets[:count].to(device), batch_size, True, 0, normalize),
        "dataloader_workers0": lambda: loader_batches(0),
        "dataloader_workers2": lambda: loader_batches(2),
    }
    results = {}
    for name, make in paths.items():
        torch.manual_seed(0)
        model = MLP([1, 28, 28], 10).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = make()
        synchronize(device)
        started = time.perf_counter()
        hand_written_epoch(model, optimizer, batches, channels_last=False)
        synchronize(device)
        results[name] = count / (time.perf_counter() - started)
    return results


class _NumpyImages:
    def __init__(self, arrays, targets, transform) -> None:
        self.arrays, self.targets, self.transform = arrays, targets, transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        return self.transform(self.arrays[i]), int(self.targets[i])


def cli_run(overrides: list[str], cwd: Path, marker: str | None = None) -> dict[str, Any]:
    """Run train.py; returns wall seconds (and seconds until `marker` was printed)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides, "trainer.progress=none"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    marked = None
    for line in process.stdout:  # type: ignore[union-attr]
        if marker and marked is None and marker in line:
            marked = time.perf_counter() - started
    process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(overrides)} exited with {process.returncode}")
    (metrics_path,) = sorted(cwd.glob("saved/runs/*/*/metrics.json"), key=lambda p: p.stat().st_mtime)[-1:]
    return {"wall": time.perf_counter() - started, "marked": marked, "metrics": json.loads(metrics_path.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and epochs: under 2 minutes on 2 CPU cores")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding MNIST/raw/")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    images, targets, source = load_images(args.data_root)
    data_args = ["data=mnist", f"data.root={args.data_root.resolve()}"] if source == "mnist" else ["data=synthetic", "data.dataset.train_size=60000"]
    rows: list[tuple[str, str, str]] = []
    out: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "data": source, "quick": args.quick}

    # Many short alternating rounds: on a shared machine the speed drifts by tens of
    # percent within seconds, and medians over interleaved rounds cancel that out.
    rounds = 15 if args.quick else 41
    mlp = overhead(lambda: MLP([1, 28, 28], 10), images, targets, device, 60, rounds)
    cnn = overhead(lambda: CNN([1, 28, 28], 10), images, targets, device, 15, rounds)
    out.update(overhead_ratio=mlp["ratio"], overhead_mlp=mlp, overhead_cnn=cnn)
    rows += [
        ("overhead", "mlp: Trainer, hand-written steps/s; ratio", f"{mlp['trainer_steps_per_s']:.0f}, {mlp['hand_steps_per_s']:.0f}; {mlp['ratio']:.3f}"),
        ("overhead", "cnn: Trainer, hand-written steps/s; ratio", f"{cnn['trainer_steps_per_s']:.0f}, {cnn['hand_steps_per_s']:.0f}; {cnn['ratio']:.3f}"),
    ]

    paths = data_paths(images, targets, args.data_root, source, device, 100 if args.quick else 400)
    out.update(
        data_path_ratio=paths["in_memory"] / paths["dataloader_workers0"],
        data_path_ratio_workers2=paths["in_memory"] / paths["dataloader_workers2"],
        data_path_samples_per_s=paths,
    )
    for name, value in paths.items():
        rows.append(("data path", f"mlp, batch 128, {name}: samples/s", f"{value:,.0f}"))
    rows.append(("data path", "in-memory / DataLoader(ToTensor, workers=0)", f"{out['data_path_ratio']:.2f}x"))
    rows.append(("data path", "in-memory / DataLoader(ToTensor, workers=2)", f"{out['data_path_ratio_workers2']:.2f}x"))

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        help_times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], cwd=cwd, capture_output=True, check=True)
            help_times.append(time.perf_counter() - started)
        out["help_seconds"] = statistics.median(help_times)
        rows.append(("startup", "train.py --help", f"{out['help_seconds']:.2f} s"))

        epochs = 1 if args.quick else 3
        cnn_run = cli_run([*data_args, "model=cnn", f"trainer.epochs={epochs}"], cwd, marker="first optimizer step done")
        accuracy = cnn_run["metrics"]["test"]["test/accuracy"]
        out["first_step_seconds"] = cnn_run["marked"]
        out["cnn_run"] = {"epochs": epochs, "wall_seconds": cnn_run["wall"], "test_accuracy": accuracy}
        out["time_to_98_seconds"] = cnn_run["wall"] if accuracy >= 0.98 else None
        out["epoch_seconds_cnn"] = statistics.mean(r["seconds"] for r in cnn_run["metrics"]["history"])
        rows.append(("startup", "process start to first optimizer step (cnn)", f"{cnn_run['marked']:.2f} s"))
        rows.append(("accuracy", f"cnn {epochs} epoch(s): wall seconds, test accuracy", f"{cnn_run['wall']:.1f} s, {accuracy:.4f}"))
        rows.append(("accuracy", "wall seconds to >= 98% test accuracy (cnn)", f"{out['time_to_98_seconds']:.1f} s" if out["time_to_98_seconds"] else "not reached"))
        mlp_run = cli_run([*data_args, "model=mlp", f"trainer.epochs={epochs}"], cwd)
        out["epoch_seconds_mlp"] = statistics.mean(r["seconds"] for r in mlp_run["metrics"]["history"])
        rows.append(("epoch", "seconds per epoch: mlp / cnn", f"{out['epoch_seconds_mlp']:.1f} / {out['epoch_seconds_cnn']:.1f}"))

    if not args.quick or device.type == "cuda":
        variants = {}
        for precision in ("32", "bf16-mixed"):
            for compiled in (False, True):
                result = overhead(lambda: CNN([1, 28, 28], 10), images, targets, device, 100, 2, precision=precision, compile=compiled)
                variants[f"{precision}{'+compile' if compiled else ''}"] = result["trainer_steps_per_s"]
                rows.append(("precision", f"cnn Trainer steps/s, precision {precision}, compile {compiled}", f"{result['trainer_steps_per_s']:.0f}"))
        out["precision_compile_steps_per_s"] = variants

    table = Table(title=f"Benchmark on {device} ({source} data{', quick' if args.quick else ''})", title_justify="left")
    for column in ("section", "measure", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    out["table"] = [dict(zip(("section", "measure", "value"), row)) for row in rows]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
