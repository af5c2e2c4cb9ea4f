"""The work of `python train.py model=cnn trainer.epochs=1`, written by hand in few lines.

    python benchmarks/minimal_mnist.py [cnn|mlp] [data_root]

Loads MNIST with torchvision, holds it as normalised tensors, trains one epoch with
Adam (batch 128) on 54,000 images, validates on the other 6,000, tests on the 10,000,
and saves the weights: the same model, data split sizes, batch sizes and optimizer as
the framework's defaults, without its checks, metrics, logging or checkpoints.
`benchmarks/run.py` runs it beside `train.py` to measure the whole-process cost of
the framework, start-up included. It prints the same first-step line as train.py.
"""

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.datasets import MNIST

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.models.cnn import CNN  # noqa: E402
from src.models.mlp import MLP  # noqa: E402


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(1000), labels.split(1000)))
    return correct / len(labels)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "cnn"
    root = sys.argv[2] if len(sys.argv) > 2 else str(REPO / "data")
    torch.manual_seed(0)
    train, test = MNIST(root, train=True), MNIST(root, train=False)
    normalise = lambda d: ((d.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)  # noqa: E731
    images, labels = normalise(train), train.targets
    order = torch.randperm(len(images))
    fit, held_out = order[:54_000], order[54_000:]
    model = CNN([1, 28, 28], 10, dropout=0.1) if name == "cnn" else MLP([1, 28, 28], 10, dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for i, batch in enumerate(fit[torch.randperm(len(fit))].split(128)):
        loss = criterion(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == 0:
            print(f"{time.strftime('%H:%M:%S')} first optimizer step done", flush=True)
    print(f"val accuracy {accuracy(model, images[held_out], labels[held_out]):.4f}")
    print(f"test accuracy {accuracy(model, normalise(test), test.targets):.4f}")
    torch.save(model.state_dict(), "minimal_mnist.pt")


if __name__ == "__main__":
    main()
