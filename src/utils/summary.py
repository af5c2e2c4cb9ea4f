"""The model summary printed at the start of a run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.table import Table
from torch import nn


def model_summary(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> Table:
    """Parameters (all and trainable), size in MB, and the input and output shapes of
    one dry batch of two samples."""
    parameters = list(model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    size_mb = sum(t.numel() * t.element_size() for t in [*parameters, *model.buffers()]) / 2**20
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(torch.zeros(2, *input_shape, device=device))
    model.train(was_training)
    table = Table(title=f"Model: {type(model).__name__}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("parameters", f"{total:,}")
    table.add_row("trainable", f"{trainable:,}")
    table.add_row("size", f"{size_mb:.2f} MB")
    table.add_row("input", str((2, *input_shape)))
    table.add_row("output", str(tuple(output.shape)))
    table.add_row("device", str(device))
    return table
