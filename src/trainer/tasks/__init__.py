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

`data.task` is either a short name in `TASKS` below (the shipped tasks) or the dotted path
of your own `Task` subclass in a module on your PYTHONPATH (`data.task=my_tasks.TrainF1`):
`task_class` resolves both, and nothing else decides a run's task.

Adding a task: write a `Task` subclass in your own module (its metric names, a
`metrics` method that builds a class with update/compute/state_dict/load_state_dict/
extras, and what it needs of the config and the loss; or subclass a shipped task and
change one of them) and name it in `data.task`. A checkpoint's stored `data.task` may
only name a `Task` subclass (src/trainer/stored_config.py).
"""

from __future__ import annotations

# What `instantiate` uses to find a `_target_`; a stored config's data.task is checked with it too.
from hydra._internal.utils import _locate
from omegaconf import DictConfig

from src.trainer.tasks.base import Extra, Metrics, Task
from src.trainer.tasks.classification import Classification
from src.trainer.tasks.multilabel import Multilabel
from src.trainer.tasks.regression import Regression
from src.utils.errors import UserError, one_line

TASKS: dict[str, type[Task]] = {task.name: task for task in (Classification, Regression, Multilabel)}


def task_class(name: str) -> type[Task]:
    """The class `data.task=name` names: a shipped task's short name, or the dotted path of
    a `Task` subclass (importing its module, which your own config chose)."""
    if name in TASKS:
        return TASKS[name]
    reason = "is not a dotted path"
    if isinstance(name, str) and "." in name:
        try:
            found = _locate(name)
        except Exception as err:  # ImportError (its cause: what the import raised), or what the module raises
            found, reason = None, f"cannot be imported ({one_line(err.__cause__ or err, limit=160)})"
        if isinstance(found, type) and issubclass(found, Task):
            return found
        elif isinstance(found, type):
            reason = f"is the class {found.__module__}.{found.__qualname__}, not a Task subclass"
        elif found is not None:
            reason = f"is a {type(found).__name__}, not a Task subclass"
    raise UserError(
        f"Invalid value data.task={name!r}: it {reason}. Expected one of {', '.join(TASKS)}, or the dotted path of "
        f"a subclass of src.trainer.tasks.Task in a module on your PYTHONPATH (e.g. data.task=my_tasks.TrainF1)."
    )


def get_task(data: DictConfig, target_stats: dict[str, list[float]] | None = None) -> Task:
    """The task of a (validated) `data` config; `target_stats`: the training split's
    target statistics (a checkpoint's), for a task that trains on standardised targets."""
    return task_class(data.task)(data.num_outputs, target_stats)


__all__ = ["TASKS", "Extra", "Metrics", "Task", "get_task", "task_class"]
