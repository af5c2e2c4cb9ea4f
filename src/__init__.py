"""A command-line PyTorch training framework configured with Hydra.

Nothing is imported here on purpose: `train.py --help` and config errors must not pay
for importing torch.
"""
