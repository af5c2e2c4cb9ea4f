"""Using a trained model: predict.py, load_for_inference and export.py on tiny runs made here."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, load, make_mnist_like, run_cli, run_dirs, run_with_fault
from src.inference import load_for_inference
from src.trainer.checkpoint import load_checkpoint, save_checkpoint
from src.utils.config import EXPORT_SUFFIXES
from src.utils.errors import UserError
from test_tasks_and_data import write_linear_csv

MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist_like(tmp_path_factory.mktemp("datasets"), folder="MNIST")


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """best.pt of an mlp trained on one batch of MNIST-like images: right on most test
    images, not all, so that a preprocessing slip would show in the accuracy."""
    cwd = tmp_path_factory.mktemp("mnist_run")
    result = run_cli(
        "train.py", "data=mnist", f"data.root={mnist_root}", "model=mlp", "trainer.epochs=1", "trainer.limit_batches=1",
        "logger=none", *FAST, cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def test_py_record(mnist_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What test.py reports for the run's test split."""
    result = run_cli("test.py", f"checkpoint={mnist_run}", "device=cpu", "logger=none", cwd=tmp_path_factory.mktemp("test_py"))
    assert result.returncode == 0, result.stderr
    return json.loads(mnist_run.with_name("best.test.json").read_text())


def mnist_test_split(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test images (uint8, N x 28 x 28) and labels, read by torchvision."""
    from torchvision.datasets import MNIST

    test_set = MNIST(str(root), train=False)
    return test_set.data, test_set.targets


@pytest.fixture(scope="module")
def mnist_pngs(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test split as PNG files, <label>/<index>.png."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pngs")
    images, labels = mnist_test_split(mnist_root)
    for i, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a linear regression on the columns a, b, c -> price."""
    cwd = tmp_path_factory.mktemp("csv_run")
    table = write_linear_csv(cwd / "houses.csv", rows=200)
    result = run_cli(
        "train.py", "data=csv", f"data.path={table}", "data.target=price", "model=linear", "loss=mse",
        "optimizer.lr=0.05", "trainer.epochs=3", "logger=none", *FAST, cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir / "checkpoints" / "best.pt"


def predict(checkpoint: Path, inputs: Path, *overrides: str, cwd: Path):
    return run_cli("predict.py", f"checkpoint={checkpoint}", f"inputs={inputs}", "device=cpu", *overrides, cwd=cwd)


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def confusion(labels: list[int], predicted: list[int], classes: int = 10) -> list[list[int]]:
    matrix = [[0] * classes for _ in range(classes)]
    for label, guess in zip(labels, predicted):
        matrix[label][guess] += 1
    return matrix


def test_predict_on_a_folder_of_test_pngs_agrees_with_test_py(tmp_path: Path, mnist_run: Path, mnist_pngs: Path, test_py_record: dict) -> None:
    result = predict(mnist_run, mnist_pngs, "top_k=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (output,) = (tmp_path / "saved" / "predictions").glob("*/predictions.csv")
    assert str(output) in result.stdout.replace("\n", "")

    rows = read_predictions(output)
    labels = [int(Path(row["input"]).parent.name) for row in rows]
    predicted = [int(row["class_index"]) for row in rows]
    assert len(rows) == test_py_record["samples"] == 200
    assert [row["predicted"] for row in rows] == [MNIST_CLASSES[i] for i in predicted]
    accuracy = sum(p == y for p, y in zip(predicted, labels)) / len(rows)
    assert 0.3 < accuracy < 1, "a model that is right on some images only: a preprocessing slip would show"
    assert accuracy == pytest.approx(test_py_record["metrics"]["test/accuracy"], abs=1e-9)
    assert confusion(labels, predicted) == test_py_record["confusion_matrix"]
    # With top_k=10 every class's probability is listed: their cross-entropy is test.py's loss.
    names = ["predicted"] + [f"top{k}" for k in range(2, 11)]
    probabilities = ["probability"] + [f"top{k}_probability" for k in range(2, 11)]
    true_class = [next(float(row[p]) for n, p in zip(names, probabilities) if row[n] == MNIST_CLASSES[y]) for row, y in zip(rows, labels)]
    loss = -sum(math.log(p) for p in true_class) / len(rows)
    assert loss == pytest.approx(test_py_record["metrics"]["test/loss"], rel=1e-4)


def test_load_for_inference_reproduces_test_py(mnist_run: Path, mnist_root: Path, test_py_record: dict) -> None:
    predictor = load_for_inference(mnist_run)
    assert not predictor.model.training and predictor.device == torch.device("cpu")
    assert predictor.classes == MNIST_CLASSES == load(mnist_run)["classes"]
    images, labels = mnist_test_split(mnist_root)
    probabilities = predictor.predict(images)  # uint8 (N, 28, 28): one channel
    assert probabilities.shape == (200, 10) and torch.allclose(probabilities.sum(dim=1), torch.ones(200))
    predicted = probabilities.argmax(dim=1)
    assert int((predicted == labels).sum()) / len(labels) == pytest.approx(test_py_record["metrics"]["test/accuracy"], abs=1e-9)
    assert confusion(labels.tolist(), predicted.tolist()) == test_py_record["confusion_matrix"]
    loss = torch.nn.functional.nll_loss(probabilities.log(), labels).item()
    assert loss == pytest.approx(test_py_record["metrics"]["test/loss"], rel=1e-4)
    assert predictor.class_name(int(predicted[0])) == MNIST_CLASSES[int(predicted[0])]


def test_predict_reads_one_image_a_npy_array_and_an_idx_file(tmp_path: Path, mnist_run: Path, mnist_root: Path, mnist_pngs: Path) -> None:
    images, _ = mnist_test_split(mnist_root)
    expected = load_for_inference(mnist_run).predict(images)
    np.save(tmp_path / "images.npy", images.numpy())
    idx = mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    for inputs in (tmp_path / "images.npy", idx):
        result = predict(mnist_run, inputs, f"output={tmp_path / (inputs.name + '.csv')}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = read_predictions(tmp_path / (inputs.name + ".csv"))
        assert [row["input"] for row in rows] == [str(i) for i in range(200)]
        assert [int(row["class_index"]) for row in rows] == expected.argmax(dim=1).tolist()
        assert [float(row["probability"]) for row in rows] == pytest.approx(expected.max(dim=1).values.tolist(), abs=1e-6)

    one = sorted((mnist_pngs / "3").glob("*.png"))[0]
    result = predict(mnist_run, one, "top_k=3", f"output={tmp_path / 'one.csv'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = read_predictions(tmp_path / "one.csv")
    assert list(row) == ["input", "predicted", "class_index", "probability", "top2", "top2_probability", "top3", "top3_probability"]
    assert int(row["class_index"]) == int(expected[int(one.stem)].argmax())


def test_predict_finds_a_tables_feature_columns_by_name(tmp_path: Path, csv_run: Path) -> None:
    assert load(csv_run)["features"] == ["a", "b", "c"]
    rows = [[0.5, -1.0, 2.0], [1.0, 0.0, 0.0], [-2.0, 3.0, 1.0]]
    # Another column order and a column the model does not use: found by name.
    table = tmp_path / "new.csv"
    table.write_text("c,id,b,a\n" + "".join(f"{c},{i},{b},{a}\n" for i, (a, b, c) in enumerate(rows)))
    result = predict(csv_run, table, f"output={tmp_path / 'out.csv'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    predictions = read_predictions(tmp_path / "out.csv")
    expected = load_for_inference(csv_run).predict(torch.tensor(rows))
    assert [row["input"] for row in predictions] == ["0", "1", "2"]
    assert [float(row["price"]) for row in predictions] == pytest.approx(expected[:, 0].tolist(), abs=1e-5)

    missing = tmp_path / "missing.csv"
    missing.write_text("a,c\n1,2\n")
    result = predict(csv_run, missing, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no column(s) 'b', which the model takes as input: it was trained on the features a, b, c" in result.stderr


def write_png(path: Path, shape: tuple[int, ...]) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros(shape, dtype=np.uint8)).save(path)
    return path


def write_text(path: Path) -> Path:
    path.write_text("not an input")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda tmp: write_png(tmp / "big.png", (32, 32)), "big.png has the shape (1, 32, 32) (L), but the model takes images of shape (1, 28, 28)", id="wrong size"),
        pytest.param(lambda tmp: write_png(tmp / "rgb.png", (28, 28, 3)), "convert the image to grayscale (one channel) 28x28 pixels first", id="wrong channels"),
        pytest.param(lambda tmp: tmp / "nowhere.png", "inputs='", id="missing file"),
        pytest.param(lambda tmp: write_text(tmp / "notes.txt"), "a .txt file is not an input predict.py reads", id="unknown kind"),
    ],
)
def test_bad_inputs_get_a_paragraph_and_exit_2(tmp_path: Path, mnist_run: Path, make, message: str) -> None:
    result = predict(mnist_run, make(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "saved" / "predictions").glob("*")), "a failed prediction leaves no folder behind"


def run_exported(path: Path, format_name: str, inputs: torch.Tensor) -> torch.Tensor:
    """The exported file run by its own runtime."""
    if format_name == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])
    if format_name == "torch_export":
        return torch.export.load(str(path)).module()(inputs)
    return torch.jit.load(str(path))(inputs)


@pytest.mark.parametrize("format_name", list(EXPORT_SUFFIXES))
def test_export_writes_a_checked_model_and_its_preprocessing(tmp_path: Path, mnist_run: Path, mnist_root: Path, format_name: str) -> None:
    result = run_cli("export.py", f"checkpoint={mnist_run}", f"format={format_name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = mnist_run.with_name("best" + EXPORT_SUFFIXES[format_name])
    assert "5 samples of the run's test split (mnist)" in result.stdout
    difference = float(re.search(r"max abs difference (\S+)", result.stdout).group(1))
    assert difference < 1e-4
    sidecar = json.loads(Path(f"{output}.json").read_text())
    assert sidecar["format"] == format_name and sidecar["input_shape"] == [1, 28, 28] and sidecar["task"] == "classification"
    assert sidecar["mean"] == [0.1307] and sidecar["std"] == [0.3081] and sidecar["classes"] == MNIST_CLASSES

    predictor = load_for_inference(mnist_run)
    images, _ = mnist_test_split(mnist_root)
    for batch in (1, 7):  # neither is the batch it was exported from
        inputs = predictor.prepare(images[:batch])
        with torch.no_grad():
            got, expected = run_exported(output, format_name, inputs), predictor.model(inputs)
        assert (got - expected).abs().max().item() < 1e-4


def test_export_refuses_to_overwrite_a_file(tmp_path: Path, mnist_run: Path) -> None:
    taken = tmp_path / "model.onnx"
    taken.write_text("mine")
    result = run_cli("export.py", f"checkpoint={mnist_run}", f"output={taken}", cwd=tmp_path)
    assert result.returncode == 2 and "model.onnx already exists" in result.stderr
    assert taken.read_text() == "mine"


def test_an_export_that_differs_from_the_model_fails_with_exit_1(tmp_path: Path, mnist_run: Path) -> None:
    output = tmp_path / "model.pt2"
    result = run_with_fault(
        "export.py", "import src.export; src.export.TOLERANCE = -1.0",  # any difference, 0 included, is too much
        f"checkpoint={mnist_run}", "format=torch_export", f"output={output}", cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "differs from the model in PyTorch by up to" in result.stderr and "Nothing was written" in result.stderr
    assert not output.exists() and not Path(f"{output}.json").exists()


class DoubleLargeInputs(torch.nn.Module):
    """Doubles inputs that add up to more than 1000: tracing records only the branch
    its example took, and a random example of a few values never takes this one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 1000 else x


class BatchAsInt(torch.nn.Module):
    """Flattens with the batch size as a Python int, which an export may freeze."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1)


def test_exports_that_compute_something_else_are_caught() -> None:
    from src.export import ExportFailed, export_and_check

    with pytest.raises(ExportFailed, match="differs from the model in PyTorch by up to 100 on test inputs"):
        export_and_check(DoubleLargeInputs(), "torchscript", torch.full((5, 3), 100.0), "test inputs")
    with pytest.raises(ExportFailed, match="does not take another batch size"):
        export_and_check(BatchAsInt(), "torchscript", torch.rand(4, 3, 2), "test inputs")
    with pytest.raises(ExportFailed, match="Exporting BatchAsInt as torch_export and running the export failed"):
        export_and_check(BatchAsInt(), "torch_export", torch.rand(4, 3, 2), "test inputs")


def test_class_and_feature_names_are_checked_and_optional(tmp_path: Path, mnist_run: Path) -> None:
    state = load(mnist_run)
    old = {key: value for key, value in state.items() if key not in ("classes", "features")}
    save_checkpoint(old, tmp_path / "old.pt")  # as written before checkpoints kept names
    predictor = load_for_inference(tmp_path / "old.pt")
    assert predictor.classes is None and predictor.class_name(2) == "2"
    save_checkpoint({**state, "classes": [1, 2]}, tmp_path / "numbers.pt")
    with pytest.raises(UserError, match=r"classes=\[1, 2\] is not None or a list of class names"):
        load_checkpoint(tmp_path / "numbers.pt")
    save_checkpoint({**state, "features": "a,b"}, tmp_path / "text.pt")
    with pytest.raises(UserError, match="features='a,b' is not None or a list of feature names"):
        load_checkpoint(tmp_path / "text.pt")


@pytest.mark.parametrize("script", ["predict.py", "export.py"])
def test_help_lists_the_keys_without_running(tmp_path: Path, script: str) -> None:
    result = run_cli(script, "--help", cwd=tmp_path, timeout=30)
    assert result.returncode == 0 and "checkpoint: ???" in result.stdout
    assert not (tmp_path / "saved").exists()
