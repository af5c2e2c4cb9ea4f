"""Tasks: what a run learns, and everything about it that is not the loop.

A task (`Task` in base.py) owns its metric names (which `trainer.monitor` is checked
against), its config rules, how targets reach the loss (a class index one-hot encoded
for mse, targets cast to the outputs' dtype), how a CSV's target columns become
targets, and its metrics: sums on the device with a state_dict for a mid-epoch resume,
and evaluation extras such as a classifier's confusion matrix. The loop, train.py,
test.py, the config checks and the CSV reader ask the run's task object; none of them
names a task.

Why the task classes import no torch: the config checks run before torch is imported
(a bad config fails in a fraction of a second), and they need each task's names,
metric names and rules. So a task class holds those itself, and imports its torch half
(the metric sums in src/trainer/metrics.py, the target wrappers in
src/trainer/losses.py) only inside the methods that build them, which run after the
checks. Every fact about a task is written once, in its class.

`TASKS` below is the one registry: `data.task` is looked up here and nowhere else, so
a config (or a checkpoint's stored config) can only pick one of these classes.

Adding a task: write a `Task` subclass in a module here (its metric names, a
`metrics` method that builds a class with update/compute/state_dict/load_state_dict/
extras, and what it needs of the config and the loss), then add it to `TASKS`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from src.trainer.tasks.base import Extra, Metrics, Task
from src.trainer.tasks.classification import Classification
from src.trainer.tasks.multilabel import Multilabel
from src.trainer.tasks.regression import Regression
from src.utils.errors import UserError

TASKS: dict[str, type[Task]] = {task.name: task for task in (Classification, Regression, Multilabel)}


def task_class(name: str) -> type[Task]:
    """The class registered as `data.task=name`."""
    if name not in TASKS:
        raise UserError(f"Invalid value data.task={name!r}: expected one of {', '.join(TASKS)}.")
    return TASKS[name]


def get_task(data: DictConfig, target_stats: dict[str, list[float]] | None = None) -> Task:
    """The task of a (validated) `data` config; `target_stats`: the training split's
    target statistics (a checkpoint's), for a task that trains on standardised targets."""
    return task_class(data.task)(data.num_outputs, target_stats)


__all__ = ["TASKS", "Extra", "Metrics", "Task", "get_task", "task_class"]
