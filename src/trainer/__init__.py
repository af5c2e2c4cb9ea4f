"""The training loop and what it needs: metrics, checkpoints, early stopping, progress."""
