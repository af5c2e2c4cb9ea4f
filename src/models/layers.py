"""Small building blocks shared by the models."""

from __future__ import annotations

from torch import nn


def activation(name: str) -> nn.Module:
    """An activation module from its torch.nn class name, e.g. "ReLU" or "GELU"."""
    cls = getattr(nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.endswith("activation")):
        choices = "ReLU, GELU, SiLU, Tanh, Sigmoid, LeakyReLU, ELU, Mish, ..."
        raise ValueError(f"activation={name!r} is not a torch.nn activation class; use one of {choices}")
    return cls()
