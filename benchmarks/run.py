"""Speed benchmarks whose ratios hold on a busy machine.

    python benchmarks/run.py --quick --out saved/benchmark.json   # a few minutes on 2 CPU cores
    python benchmarks/run.py                                      # every section, more rounds
    python benchmarks/run.py --sections startup --runs 7          # one section

Every comparison runs its contenders in alternating rounds (A B B A A B ...), each
round at least `--round-seconds` (2 s) of work, after one warm-up call of each; a
ratio is taken within each round pair, so a slow spell of the machine slows both
sides, and is reported as the median with the min and max over the rounds.

Sections (each printed as rows of one table and written to the JSON file):
- overhead: Trainer.train_epoch vs the textbook loop (forward, loss, zero_grad,
  backward, step; no metrics, no checks) training the same model object on the same
  in-memory batches, for the mlp and the cnn; the ratio is Trainer steps/s over the
  hand-written loop's (1.0: no overhead).
- data: the hand-written loop fed by the in-memory batches vs torchvision's
  ToTensor + DataLoader (num_workers 0 and 2; worker start-up happens in the
  warm-up call, outside the timed rounds); ratio: in-memory samples/s over the other's.
- variants: Trainer steps/s of the cnn with precision bf16-mixed and with
  trainer.compile=true, each over the default (precision 32, no compile).
- startup: `train.py --help`, and process start to the first optimizer step of
  `train.py model=cnn`, of benchmarks/minimal_mnist.py, and of torch alone (import
  torch, one Adam step of a 4x2 linear layer: every torch program's floor), median of
  `--runs`.
- process: whole-process wall and CPU seconds of a 1-epoch `train.py` run vs
  benchmarks/minimal_mnist.py doing the same work (load MNIST, train, validate,
  test, save), with both test accuracies, for each of `--process-models`.

On a CPU that other jobs share, run it with OMP_WAIT_POLICY=PASSIVE as well as
without: torch's OpenMP threads otherwise spin between parallel regions, and a run's
time then depends more on the other jobs than on the code (see the README's Speed).
--quick runs overhead, data and startup with fewer rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
SECTIONS = ("overhead", "data", "variants", "startup", "process")
QUICK_SECTIONS = ("overhead", "data", "startup")
FIRST_STEP = "first optimizer step done"
# The least any torch program does before its first step: import torch, build an Adam
# (torch.optim imports torch._dynamo on the first step) and take one step of 10 weights.
TORCH_FLOOR = (
    "import torch; m = torch.nn.Linear(4, 2); o = torch.optim.Adam(m.parameters()); "
    f"m(torch.zeros(1, 4)).sum().backward(); o.step(); print({FIRST_STEP!r}, flush=True)"
)
MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": lambda: MLP([1, 28, 28], 10), "cnn": lambda: CNN([1, 28, 28], 10)}


# ---------------------------------------------------------------- measuring
def alternate(work: dict[str, Callable[[], int]], rounds: int, min_seconds: float, device: torch.device) -> dict[str, list[float]]:
    """Units per second of each kind of `work`, one value per round.

    Each callable does some work and returns how many units (steps, samples) it did.
    Every kind is called once to warm up (allocations, workers, compilation); then in
    each of `rounds` rounds every kind is called until `min_seconds` have passed, the
    order reversed every round so that none always follows the same other.
    """
    for do in work.values():
        do()
    kinds = list(work)
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
            units, elapsed, started = 0, 0.0, time.perf_counter()
            while not units or elapsed < min_seconds:
                units += work[kind]()
                synchronize(device)
                elapsed = time.perf_counter() - started
            rates[kind].append(units / elapsed)
    return rates


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(rates: dict[str, list[float]], top: str, bottom: str) -> dict[str, float]:
    """Median, min and max over the rounds of `top`'s rate over `bottom`'s in the same round."""
    return spread([t / b for t, b in zip(rates[top], rates[bottom])])


def shown(r: dict[str, float], digits: int = 3) -> str:
    return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}-{r['max']:.{digits}f})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- in-process sections
def load_images(data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's 60,000 training images as uint8 (N, 1, 28, 28) and their labels."""
    from src.data.bundled import unpack_mnist
    from src.data.mnist import MNIST

    unpack_mnist(data_root)
    dataset = MNIST(data_root, train=True)
    return dataset.data.unsqueeze(1), dataset.targets


def trainer_config(**overrides: Any):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.progress=none", "trainer.monitor=train/loss"])
    for key, value in overrides.items():
        cfg.trainer[key] = value
    return cfg.trainer


def hand_written_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any, channels_last: bool) -> int:
    """The textbook loop: forward, loss, zero_grad, backward, step; no metrics, no
    checks. Returns the number of steps it took."""
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


def in_memory_batches(images: torch.Tensor, targets: torch.Tensor, steps: int, device: torch.device) -> InMemoryBatches:
    count = steps * 128  # whole batches only: no last partial batch
    normalize = Normalize(MNIST_MEAN, MNIST_STD, device)
    return InMemoryBatches(images[:count].to(device), targets[:count].to(device), 128, True, 0, normalize)


def make_trainer(model_name: str, batches: InMemoryBatches, device: torch.device, run_dir: Path, **options: Any) -> Trainer:
    torch.manual_seed(0)
    model = MODELS[model_name]().to(device)
    return Trainer(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        scheduler=None,
        data=DataSplits(train=batches, val=None, test=None, in_memory=True, input_shape=(1, 28, 28)),
        cfg=trainer_config(**options),
        task=Classification(10),
        device=device,
        run_dir=run_dir,
    )


def trainer_epoch(trainer: Trainer) -> Callable[[], int]:
    def run() -> int:
        before = trainer.step
        trainer.train_epoch()
        return trainer.step - before

    return run


def overhead(model_name: str, images, targets, device: torch.device, steps: int, rounds: int, seconds: float) -> dict[str, Any]:
    """Trainer.train_epoch vs the hand-written loop, training the very same model and
    optimizer objects: two copies would sit at different memory addresses, which alone
    can make one a few percent faster than the other for the whole process."""
    batches = in_memory_batches(images, targets, steps, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(model_name, batches, device, Path(tmp))
        model, channels_last = trainer.train_forward.model, trainer.train_forward.channels_last
        work = {
            "hand": lambda: hand_written_epoch(model, trainer.optimizer, batches, channels_last),
            "trainer": trainer_epoch(trainer),
        }
        rates = alternate(work, rounds, seconds, device)
        trainer.close()
    return {
        "ratio": ratio(rates, "trainer", "hand"),
        "trainer_steps_per_s": spread(rates["trainer"]),
        "hand_steps_per_s": spread(rates["hand"]),
    }


def variants(images, targets, device: torch.device, steps: int, rounds: int, seconds: float) -> dict[str, Any]:
    """The cnn's Trainer steps/s with bf16-mixed and with compile, against the default."""
    batches = in_memory_batches(images, targets, steps, device)
    options = {"default": {}, "bf16-mixed": {"precision": "bf16-mixed"}, "compile": {"compile": True}}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: make_trainer("cnn", batches, device, Path(tmp) / name, **opts) for name, opts in options.items()}
        started = time.perf_counter()
        trainer_epoch(trainers["compile"])()  # the first call compiles; timed apart
        compile_seconds = time.perf_counter() - started
        rates = alternate({name: trainer_epoch(t) for name, t in trainers.items()}, rounds, seconds, device)
        for trainer in trainers.values():
            trainer.close()
    return {
        "steps_per_s": {name: spread(r) for name, r in rates.items()},
        "bf16_over_default": ratio(rates, "bf16-mixed", "default"),
        "compile_over_default": ratio(rates, "compile", "default"),
        "first_compiled_epoch_seconds": compile_seconds,
        "steps_per_epoch": steps,
    }


def data_paths(images, targets, data_root: Path, device: torch.device, batches_per_call: int, rounds: int, seconds: float) -> dict[str, Any]:
    """Samples/s of the hand-written mlp loop fed by each data path, in alternating rounds.

    The DataLoaders keep their workers (persistent_workers) and each hands out an endless
    stream of batches; starting the workers happens in the warm-up call."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import MNIST

    batch_size = 128
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    dataset = MNIST(str(data_root), train=True, download=False, transform=to_tensor)

    def endless(loader: DataLoader):
        while True:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def endless_in_memory():
        batches = in_memory_batches(images, targets, len(images) // batch_size, device)
        epoch = 0
        while True:
            batches.set_epoch(epoch)
            yield from batches
            epoch += 1

    streams = {
        "in_memory": endless_in_memory(),
        **{
            f"dataloader_workers{w}": endless(DataLoader(
                dataset, batch_size=batch_size, shuffle=True, num_workers=w,
                pin_memory=device.type == "cuda", persistent_workers=w > 0,
            ))
            for w in (0, 2)
        },
    }
    torch.manual_seed(0)
    model = MLP([1, 28, 28], 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def feed(stream) -> Callable[[], int]:
        def run() -> int:
            batches = (next(stream) for _ in range(batches_per_call))
            return hand_written_epoch(model, optimizer, batches, channels_last=False) * batch_size

        return run

    rates = alternate({name: feed(stream) for name, stream in streams.items()}, rounds, seconds, device)
    return {
        "samples_per_s": {name: spread(r) for name, r in rates.items()},
        "in_memory_over_workers0": ratio(rates, "in_memory", "dataloader_workers0"),
        "in_memory_over_workers2": ratio(rates, "in_memory", "dataloader_workers2"),
    }


# ---------------------------------------------------------------- whole-process sections
def run_process(command: list[str], cwd: Path, stop_at: str | None = None) -> dict[str, Any]:
    """Wall seconds of `command` (and until it printed `stop_at`, when it is then
    killed), its CPU seconds and its output."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output, marked = [], None
    for line in process.stdout:  # type: ignore[union-attr]
        output.append(line)
        if stop_at and stop_at in line:
            marked = time.perf_counter() - started
            process.kill()
            break
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if marked is None and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{''.join(output[-20:])}")
    return {"wall": wall, "marked": marked, "cpu": usage.ru_utime + usage.ru_stime, "output": "".join(output)}


def train_command(model: str, data_root: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"model={model}", f"data.root={data_root}", "trainer.progress=none", *overrides]


def minimal_command(model: str, data_root: Path) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / "minimal_mnist.py"), model, str(data_root)]


def startup(data_root: Path, runs: int) -> dict[str, Any]:
    """`--help`, and seconds from process start to the first optimizer step, median of
    `runs` alternating runs of train.py, the minimal script and torch's floor (each
    killed there)."""
    commands = {
        "train.py, cnn": train_command("cnn", data_root, "trainer.epochs=1"),
        "minimal script, cnn": minimal_command("cnn", data_root),
        "torch alone": [sys.executable, "-c", TORCH_FLOOR],
    }
    results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in commands}
    help_seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            for name in list(commands) if i % 2 == 0 else list(commands)[::-1]:
                run = run_process(commands[name], Path(tmp), stop_at=FIRST_STEP)
                results[name]["wall"].append(run["marked"])
                results[name]["cpu"].append(run["cpu"])
            help_seconds.append(run_process([sys.executable, str(REPO / "train.py"), "--help"], Path(tmp))["wall"])
    return {
        "help_seconds": spread(help_seconds),
        "first_step_seconds": {name: spread(r["wall"]) for name, r in results.items()},
        "first_step_cpu_seconds": {name: spread(r["cpu"]) for name, r in results.items()},
    }


def whole_process(data_root: Path, model: str, runs: int) -> dict[str, Any]:
    """Wall seconds of a whole 1-epoch train.py run vs the minimal script, alternating."""
    walls: dict[str, list[float]] = {"train.py": [], "minimal": []}
    cpus: dict[str, list[float]] = {"train.py": [], "minimal": []}
    accuracy: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"train.py": train_command(model, data_root, "trainer.epochs=1"), "minimal": minimal_command(model, data_root)}
        for i in range(runs):
            for name in list(commands) if i % 2 == 0 else list(commands)[::-1]:
                run = run_process(commands[name], Path(tmp))
                walls[name].append(run["wall"])
                cpus[name].append(run["cpu"])
                if name == "minimal":
                    accuracy[name] = float(re.search(r"test accuracy ([0-9.]+)", run["output"]).group(1))  # type: ignore[union-attr]
        (metrics,) = sorted(Path(tmp).glob("saved/runs/*/*/metrics.json"), key=lambda p: p.stat().st_mtime)[-1:]
        accuracy["train.py"] = json.loads(metrics.read_text())["test"]["test/accuracy"]
    return {
        "model": model,
        "wall_seconds": {name: spread(w) for name, w in walls.items()},
        "cpu_seconds": {name: spread(c) for name, c in cpus.items()},
        "train_over_minimal": spread([t / m for t, m in zip(walls["train.py"], walls["minimal"])]),
        "test_accuracy": accuracy,
    }


# ---------------------------------------------------------------- the report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"sections {', '.join(QUICK_SECTIONS)}, fewer rounds")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, help="the sections to run (default: all, or --quick's)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per comparison (default 5 quick, 9 otherwise)")
    parser.add_argument("--round-seconds", type=float, default=2.0, help="the least work in one round, in seconds")
    parser.add_argument("--runs", type=int, default=None, help="processes per side in startup and process (default 3 quick, 5 otherwise)")
    parser.add_argument("--process-models", nargs="+", choices=list(MODELS), default=["cnn"], help="the models of the process section (default: cnn)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--data-root", type=Path, default=REPO / "data", help="folder holding MNIST/raw/ (default: the bundled copy)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the in-process sections (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = args.sections or (QUICK_SECTIONS if args.quick else SECTIONS)
    rounds = args.rounds or (5 if args.quick else 9)
    runs = args.runs or (3 if args.quick else 5)
    seconds = args.round_seconds
    data_root = args.data_root.resolve()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    images, targets = load_images(data_root)
    out: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # How idle OpenMP threads wait (spinning unless set): on a CPU that other jobs
        # share, spinning threads take turns from the busy ones (see the README's Speed).
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "rounds": rounds,
        "round_seconds": seconds,
    }
    rows: list[tuple[str, str, str]] = []

    def add(row: tuple[str, str, str]) -> None:
        rows.append(row)
        print(" | ".join(row), file=sys.stderr, flush=True)  # progress, on a slow machine

    if "overhead" in sections:
        # Epochs of 100 (mlp) and 30 (cnn) batches, a fraction of a second each on 2 idle
        # cores: a round repeats them for its 2 s, and each repeat pays the per-epoch costs.
        for name, steps in (("mlp", 100), ("cnn", 30)):
            result = out[f"overhead_{name}"] = overhead(name, images, targets, device, steps, rounds, seconds)
            add(("overhead", f"{name}: Trainer / hand-written steps/s", shown(result["ratio"])))
            add(("overhead", f"{name}: Trainer, hand-written steps/s", f"{result['trainer_steps_per_s']['median']:.0f}, {result['hand_steps_per_s']['median']:.0f}"))
        out["overhead_ratio"] = out["overhead_mlp"]["ratio"]["median"]
    if "data" in sections:
        result = out["data_path"] = data_paths(images, targets, data_root, device, 20, rounds, seconds)
        for name, value in result["samples_per_s"].items():
            add(("data path", f"mlp, batch 128, {name}: samples/s", f"{value['median']:,.0f}"))
        add(("data path", "in-memory / DataLoader(ToTensor, workers=0)", shown(result["in_memory_over_workers0"], 2)))
        add(("data path", "in-memory / DataLoader(ToTensor, workers=2)", shown(result["in_memory_over_workers2"], 2)))
    if "variants" in sections:
        result = out["variants"] = variants(images, targets, device, 20, rounds, seconds)
        add(("variants", "cnn steps/s: bf16-mixed / default (32)", shown(result["bf16_over_default"])))
        add(("variants", "cnn steps/s: compile / default (no compile)", shown(result["compile_over_default"])))
        add(("variants", "cnn: first compiled epoch (20 steps)", f"{result['first_compiled_epoch_seconds']:.1f} s"))
    if "startup" in sections:
        result = out["startup"] = startup(data_root, runs)
        add(("startup", "train.py --help", f"{result['help_seconds']['median']:.2f} s"))
        for name, value in result["first_step_seconds"].items():
            cpu = result["first_step_cpu_seconds"][name]["median"]
            add(("startup", f"start to first optimizer step: {name}", f"{shown(value, 2)} s (cpu {cpu:.2f} s)"))
    for model in args.process_models if "process" in sections else []:
        result = out[f"process_{model}"] = whole_process(data_root, model, runs)
        for name, value in result["wall_seconds"].items():
            cpu = result["cpu_seconds"][name]["median"]
            add(("process", f"1-epoch {model} run, wall seconds: {name} (cpu; test acc.)", f"{shown(value, 1)} ({cpu:.1f}; {result['test_accuracy'][name]:.4f})"))
        add(("process", f"{model}: train.py / minimal script, wall", shown(result["train_over_minimal"])))

    title = f"Benchmark on {device}, {out['threads']} threads, OMP_WAIT_POLICY {out['omp_wait_policy']} ({rounds} rounds of >= {seconds:g} s; median (min-max))"
    table = Table(title=title, title_justify="left")
    for column in ("section", "measure", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)
    out["table"] = [dict(zip(("section", "measure", "value"), row)) for row in rows]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
