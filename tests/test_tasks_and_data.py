"""Regression and class names on a CSV, image folders, bad tables, and the debug presets,
through the real CLI."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, load, run_cli, run_dirs
from src.data.splits import seeded_split
from src.data.tabular import CSVTable
from src.inference import load_for_inference
from src.utils.errors import UserError


def write_linear_csv(path: Path, rows: int = 400, shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    """price = 2a - 3b + 0.5c + 1 + a little noise; the features a, b, c are standard
    normal plus `shift`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3)) + np.array(shift)
    y = 2 * x[:, 0] - 3 * x[:, 1] + 0.5 * x[:, 2] + 1 + 0.1 * rng.normal(size=rows)
    lines = ["a,b,c,price"] + [f"{a:.5f},{b:.5f},{c:.5f},{t:.5f}" for (a, b, c), t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_linear_regressor_fits_a_csv_and_evaluates_with_saved_standardisation(tmp_path: Path) -> None:
    """With the default settings: the README's command."""
    table = write_linear_csv(tmp_path / "houses.csv")
    result = run_cli("train.py", "data=csv", f"data.path={table}", "data.target=price", "model=linear", "loss=mse", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accuracy" not in result.stdout, "a regression run reports no accuracy"
    (run_dir,) = run_dirs(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"test/loss", "test/mse", "test/mae", "test/r2"}
    assert metrics["test"]["test/r2"] > 0.99

    result = run_cli("test.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "checkpoints" / "best.test.json").read_text())
    assert record["metrics"]["test/r2"] == pytest.approx(metrics["test"]["test/r2"])
    assert "confusion_matrix" not in record, "a regression has no confusion matrix"

    # The checkpoint keeps the mean and std of the training split (the file's training
    # rows less the validation rows)...
    stats = load(run_dir / "checkpoints" / "best.pt")["data_stats"]
    train_idx, _ = seeded_split(len(CSVTable(str(table), target="price")), fraction=0.1, seed=0)
    features = CSVTable(str(table), target="price").data[train_idx].double()
    assert stats["mean"] == pytest.approx(features.mean(dim=0).tolist())
    assert stats["std"] == pytest.approx(features.std(dim=0).tolist())
    # ...and of its prices, which the model learns standardised (metrics are in prices).
    prices = CSVTable(str(table), target="price").targets[train_idx].double()
    target_stats = load(run_dir / "checkpoints" / "best.pt")["target_stats"]
    assert target_stats == {"mean": pytest.approx([prices.mean().item()]), "std": pytest.approx([prices.std().item()])}
    # A prediction is a price again.
    test_rows = CSVTable(str(table), target="price", train=False)
    predicted = load_for_inference(run_dir / "checkpoints" / "best.pt").predict(test_rows.data)[:, 0]
    assert (predicted - test_rows.targets).abs().max() < 0.5
    # ...and test.py standardises another table with them. The same law on shifted
    # features: the model fits it only when they are standardised as in training (with
    # the new table's own mean, the predictions would be off by 2*5 - 3*(-4) = 22).
    shifted = write_linear_csv(tmp_path / "shifted.csv", shift=(5.0, -4.0, 0.0))
    result = run_cli("test.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"data.path={shifted}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "checkpoints" / "best.test.json").read_text())
    assert record["metrics"]["test/r2"] > 0.95


# Per species, the mean and std of the four measurements in Fisher's iris data (public domain).
IRIS = {
    "setosa": ([5.006, 3.428, 1.462, 0.246], [0.352, 0.379, 0.174, 0.105]),
    "versicolor": ([5.936, 2.770, 4.260, 1.326], [0.516, 0.314, 0.470, 0.198]),
    "virginica": ([6.588, 2.974, 5.552, 2.026], [0.636, 0.322, 0.552, 0.275]),
}


def write_iris_csv(path: Path, per_species: int = 50, species: tuple[str, ...] = tuple(IRIS)) -> Path:
    """An iris table: four measurements (cm, one decimal) and the species by name."""
    rng = np.random.default_rng(0)
    rows = [(rng.normal(*IRIS[name]).clip(0.1), name) for name in species for _ in range(per_species)]
    order = rng.permutation(len(rows))
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [",".join(f"{v:.1f}" for v in rows[i][0]) + f",{rows[i][1]}" for i in order]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_iris_table_with_species_names_trains_and_predicts_names(tmp_path: Path) -> None:
    """The README's command, with default settings; the names are the classes."""
    iris = write_iris_csv(tmp_path / "iris.csv")
    result = run_cli(
        "train.py", "data=csv", f"data.path={iris}", "data.target=species", "data.task=classification", "data.num_classes=3",
        *FAST, "logger=[]", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["test/accuracy"] >= 0.9
    checkpoint = run_dir / "checkpoints" / "best.pt"
    assert load(checkpoint)["classes"] == ["setosa", "versicolor", "virginica"]

    output = tmp_path / "species.csv"
    result = run_cli("predict.py", f"checkpoint={checkpoint}", f"inputs={iris}", f"output={output}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predicted = [row["predicted"] for row in csv.DictReader(output.open())]
    truth = [row["species"] for row in csv.DictReader(iris.open())]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.9


def test_a_new_table_takes_the_class_names_of_the_model(tmp_path: Path) -> None:
    """A table of virginicas alone still maps them to the model's class 2 (its own sorted
    names would make them class 0), and a species the model never saw is refused."""
    classes = ["setosa", "versicolor", "virginica"]
    virginicas = write_iris_csv(tmp_path / "virginica.csv", per_species=10, species=("virginica",))
    table = CSVTable(str(virginicas), target="species", task="classification", classes=classes, test_split=0.0)
    assert table.targets.tolist() == [2] * 10 and table.classes == classes
    assert CSVTable(str(virginicas), target="species", task="classification", test_split=0.0).classes == ["virginica"]
    with pytest.raises(UserError, match="holds 'virginica', which is not one of the 2 classes .*'setosa', 'versicolor'"):
        CSVTable(str(virginicas), target="species", task="classification", classes=classes[:2])
    with pytest.raises(UserError, match="names 1 classes .*, but data.num_classes=3. Set data.num_classes=1"):
        CSVTable(str(virginicas), target="species", task="classification", num_classes=3)


def test_bad_tables_are_explained(tmp_path: Path) -> None:
    good = write_linear_csv(tmp_path / "good.csv", rows=20)
    with pytest.raises(UserError, match="is not a file"):
        CSVTable(str(tmp_path / "missing.csv"), target="price")
    with pytest.raises(UserError, match="no column\\(s\\) 'prize'; its columns are: a, b, c, price"):
        CSVTable(str(good), target="prize")
    broken = tmp_path / "broken.csv"
    broken.write_text("a,b,price\n1,2,3\n4,five,6\n")
    with pytest.raises(UserError, match="line 3: column 'b' holds 'five', which is not a finite number"):
        CSVTable(str(broken), target="price")
    with pytest.raises(UserError, match="integer class indices"):
        CSVTable(str(good), target="price", task="classification")
    labels = tmp_path / "labels.csv"
    labels.write_text("a,species\n0.1,0\n0.2,1\n0.3,2\n0.4,1\n0.5,0\n")
    with pytest.raises(UserError, match="class index 2, but data.num_classes=2 allows 0..1"):
        CSVTable(str(labels), target="species", task="classification", num_classes=2)


def test_csv_errors_reach_the_cli_as_one_paragraph(tmp_path: Path) -> None:
    result = run_cli("train.py", "data=csv", *FAST, cwd=tmp_path)
    assert result.returncode == 2 and "data=csv needs data.path=..." in result.stderr
    table = write_linear_csv(tmp_path / "t.csv", rows=20)
    result = run_cli("train.py", "data=csv", f"data.path={table}", "data.target=prize", "loss=mse", *FAST, cwd=tmp_path)
    assert result.returncode == 2 and "no column(s) 'prize'" in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


def train_on_table(tmp_path: Path, content: bytes, *overrides: str):
    """Train a linear regressor on a table with these bytes, predicting its `price` column."""
    table = tmp_path / "table.csv"
    table.write_bytes(content)
    return run_cli(
        "train.py", "data=csv", f"data.path={table}", "data.target=price", "model=linear", "loss=mse",
        *overrides, *FAST, "trainer.epochs=1", cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("a,b,price\n1,2,3\n".encode() + "café,2,3\n".encode("latin-1"), "line 3: byte b'\\xe9' is not UTF-8", id="latin-1"),
        pytest.param(bytes(range(256)) * 4, "table.csv, line 2: byte b'\\x80' is not UTF-8", id="binary"),
        pytest.param(b"a,b,price\n1,2,3\n4,nan,6\n", "line 3: column 'b' holds 'nan', which is not a finite number", id="nan"),
        pytest.param(b"a,b,price\n1,2,3\n4,5,inf\n", "line 3: column 'price' holds 'inf'", id="inf"),
        pytest.param(b"a,b,price\n1,2,3\n-inf,5,6\n", "line 3: column 'a' holds '-inf'", id="-inf"),
        pytest.param(b"a,b,price\n1,2,3\n4,1e308,6\n", "line 3: column 'b' holds '1e308'", id="float32 overflow"),
        pytest.param(b"a,b,a,price\n1,2,3,4\n", "the header names column 'a' more than once (columns 1, 3)", id="duplicate header"),
        pytest.param(b"a,b,price\n1,2,3\n4,5,6,7\n", "line 3: 4 cells, but the header has 3 columns", id="extra cells"),
    ],
)
def test_unreadable_tables_name_the_file_line_and_cell(tmp_path: Path, content: bytes, message: str) -> None:
    result = train_on_table(tmp_path, content)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        pytest.param(3, [], "data.val_split=0.1 of the 2 training sample(s) rounds to none", id="too few rows for validation"),
        pytest.param(20, ["data.val_split=0.9999"], "data.val_split=0.9999 puts all 16 training samples", id="empty training split"),
        pytest.param(20, ["data.dataset.test_split=0"], "data.dataset.test_split=0 of 20 rows", id="empty test split"),
    ],
)
def test_empty_splits_are_refused_rather_than_reported_as_zero(tmp_path: Path, rows: int, overrides: list[str], message: str) -> None:
    table = write_linear_csv(tmp_path / "rows.csv", rows=rows)
    result = train_on_table(tmp_path, table.read_bytes(), *overrides)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


def test_synthetic_data_without_a_test_split_is_refused(tmp_path: Path) -> None:
    result = run_cli("train.py", "data=synthetic", "data.dataset.test_size=0", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "data.dataset.test_size=0 leaves it no samples" in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


def test_a_regression_table_with_the_default_loss_says_which_flags_to_add(tmp_path: Path) -> None:
    table = write_linear_csv(tmp_path / "houses.csv", rows=20)
    result = run_cli("train.py", "data=csv", f"data.path={table}", "data.target=price", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "data.task=regression, but the loss torch.nn.CrossEntropyLoss" in result.stderr
    assert "add loss=mse" in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


# One SGD step on targets near 1e18, taken as they are: the training loss of that step is still finite.
DIVERGING = {
    # At lr 1000 the validation loss of the weights it makes overflows float32.
    "inf": ([f"{i},{i}e17" for i in range(1, 21)], "1000"),
    # At lr 1e30 the weight and the bias overflow to infinities of opposite signs
    # (the targets' mean is negative, their correlation with a positive), so every
    # output is inf - inf.
    "nan": ([f"{i},{'1e18' if i > 10 else '-1.1e18'}" for i in range(1, 21)], "1e30"),
}


@pytest.mark.parametrize("value", list(DIVERGING))
def test_a_diverged_validation_metric_stops_the_run_by_name_and_epoch(tmp_path: Path, value: str) -> None:
    rows, lr = DIVERGING[value]
    overrides = ("optimizer=sgd", f"optimizer.lr={lr}", "data.batch_size=64", "data.standardize_target=false")
    result = train_on_table(tmp_path, "\n".join(["a,price", *rows]).encode(), *overrides)
    assert result.returncode == 1
    assert f"Non-finite validation metric val/loss={value} after epoch 1" in result.stderr
    assert "optimizer.lr" in result.stderr and "Traceback" not in result.stderr


def test_debug_overfit_drives_the_loss_to_zero(tmp_path: Path) -> None:
    result = run_cli("train.py", "data=synthetic", "debug=overfit", "trainer.epochs=40", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.parent.name == "debug-overfit"
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert final["train/loss"] < 0.05 and final["train/accuracy"] == 1.0


def test_debug_fast_and_profile_runs(tmp_path: Path) -> None:
    extras = ["trainer.log_graph=true", "trainer.log_histograms_every_n_epochs=1"]
    result = run_cli("train.py", "data=synthetic", "model=cnn", "debug=fast", *extras, *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 batches per epoch" in result.stdout and "Model: CNN" in result.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (fast_run,) = (tmp_path / "saved" / "runs" / "debug-fast").iterdir()
    events = EventAccumulator(str(fast_run), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert "train/first_batch" in tags["images"] and tags["graph"]
    assert "parameters/features.0.weight" in tags["histograms"] and "gradients/features.0.weight" in tags["histograms"]
    result = run_cli("train.py", "data=synthetic", "debug=profile", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (profile_run,) = (tmp_path / "saved" / "runs" / "debug-profile").iterdir()
    assert list((profile_run / "profiler").glob("*.pt.trace.json")), "the profiler trace is in the run folder"


def write_image_folder(root: Path, per_class: int = 40) -> Path:
    """Two easily told apart classes of 24x24 PNGs (dark and bright), and one broken file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("bright", 210)):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    (root / "dark" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_cnn_learns_an_image_folder_and_skips_a_broken_image(tmp_path: Path) -> None:
    """No data.num_classes: the class folders give the number of classes and their names."""
    photos = write_image_folder(tmp_path / "photos")
    result = run_cli(
        "train.py", "data=image_folder", f"data.root={photos}", "model=cnn",
        "data.num_workers=0", "data.batch_size=16", "trainer.epochs=3", *FAST, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Skipping 1 unreadable image(s)" in result.stdout and "DataLoader data path" in result.stdout
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["test/accuracy"] >= 0.9
    checkpoint = load(run_dir / "checkpoints" / "best.pt")
    assert checkpoint["classes"] == ["bright", "dark"] and "num_classes: 2" in checkpoint["config"]


def test_an_image_folder_counts_its_classes_and_refuses_another_count(tmp_path: Path) -> None:
    from src.data.image_folder import ImageFolderSplit
    from src.utils.config import class_folders

    photos = write_image_folder(tmp_path / "photos", per_class=3)
    assert class_folders(str(photos)) == 2
    assert class_folders(str(tmp_path / "nowhere")) is None  # the data checks say what is wrong
    (tmp_path / "split" / "train").mkdir(parents=True)
    (tmp_path / "split" / "test").mkdir()
    for name in ("cat", "dog", "emu"):
        (tmp_path / "split" / "train" / name).mkdir()
    assert class_folders(str(tmp_path / "split")) == 3  # train/ and test/: the training classes
    with pytest.raises(UserError, match=r"has 2 class folders \(bright, dark\), but data.num_classes=5: .* set data.num_classes=2"):
        ImageFolderSplit(str(photos), num_classes=5)
    # A folder of one class keeps the index the model gives it; a class it never saw is refused.
    only_dark = tmp_path / "only_dark"
    only_dark.mkdir()
    (photos / "dark").rename(only_dark / "dark")
    one_class = ImageFolderSplit(str(only_dark), classes=["bright", "dark"], test_split=0.0)
    assert {target for _, target in one_class} == {1}
    # DataLoader workers that are spawned (macOS, Windows) get the dataset pickled.
    assert {target for _, target in pickle.loads(pickle.dumps(one_class))} == {1}
    with pytest.raises(UserError, match="has class folder\\(s\\) dark that are not among the 1 classes \\(bright\\)"):
        ImageFolderSplit(str(only_dark), classes=["bright"])


def test_bad_image_folders_are_explained(tmp_path: Path) -> None:
    from src.data.image_folder import ImageFolderSplit

    photos = write_image_folder(tmp_path / "photos", per_class=3)
    with pytest.raises(UserError, match="cannot be read, e.g. .*broken.png"):
        ImageFolderSplit(str(photos), skip_unreadable=False)
    (photos / "empty").mkdir()
    with pytest.raises(UserError, match="Class folder\\(s\\) empty in .* hold no images"):
        ImageFolderSplit(str(photos))
    with pytest.raises(UserError, match="is not a folder"):
        ImageFolderSplit(str(tmp_path / "nowhere"))


def write_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(folder / f"{i}.png")


def one_image_per_class(root: Path) -> list[str]:
    write_images(root / "cat", 1)
    write_images(root / "dog", 1)
    return ["data.num_classes=2"]


def only_unreadable_images(root: Path) -> list[str]:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(b"not a png")
    return ["data.num_classes=2"]


def more_class_folders_than_classes(root: Path) -> list[str]:
    for name in ("cat", "dog", "emu"):
        write_images(root / name, 5)
    return ["data.num_classes=2"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(one_image_per_class, "data.val_split=0.1 of the 2 training sample(s) rounds to none", id="one image per class"),
        pytest.param(only_unreadable_images, "None of the 6 image(s) in", id="every image unreadable"),
        pytest.param(more_class_folders_than_classes, "has 3 class folders (cat, dog, emu), but data.num_classes=2", id="too many classes"),
    ],
)
def test_image_folders_that_cannot_train_are_refused_up_front(tmp_path: Path, make, message: str) -> None:
    overrides = make(tmp_path / "photos")
    result = run_cli(
        "train.py", "data=image_folder", f"data.root={tmp_path / 'photos'}", *overrides, "data.num_workers=0",
        *FAST, "trainer.epochs=1", cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


def test_in_memory_augmentation_repeats_exactly_for_a_resumed_epoch() -> None:
    import torch

    from src.data.batches import BatchAugment, InMemoryBatches, Normalize

    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    batches = InMemoryBatches(
        images, torch.arange(40), 8, True, 0, Normalize(None, None, torch.device("cpu")), BatchAugment(2, True)
    )
    batches.set_epoch(3)
    full = [x for x, _ in batches]
    batches.set_epoch(3, start_batch=2)
    resumed = [x for x, _ in batches]
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed)) and len(resumed) == 3
    batches.set_epoch(4)
    assert not torch.equal(full[0], next(iter(batches))[0]), "another epoch, other crops and flips"
