"""Datasets and the batches the trainer iterates over.

The trainer only sees objects with `__iter__` (yielding `(inputs, targets)` already on
the training device), `__len__`, `num_samples` and `set_epoch(epoch, start_batch)`.
"""
