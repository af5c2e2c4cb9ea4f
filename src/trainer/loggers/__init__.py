"""Loggers: where a run's metrics, images and hyperparameters go.

Chosen with the `logger` config group (`logger=[tensorboard,csv]`); each backend lives
in its own module, imported only when its config names it.
"""

from src.trainer.loggers.base import Hyperparameters, Logger, LoggerBase, Loggers

__all__ = ["Hyperparameters", "Logger", "LoggerBase", "Loggers"]
