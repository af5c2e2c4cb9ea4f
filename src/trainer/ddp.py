"""What the loop does differently under torchrun (DistributedDataParallel): gradient
sync windows, an agreed stop, shared batch-norm statistics, and a final check that
every rank ended with the same weights. In a single process each is a no-op."""

from __future__ import annotations

import hashlib
import logging
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from src.trainer.signals import StopRequest
from src.utils import distributed

log = logging.getLogger(__name__)


def gradient_sync(ddp: nn.parallel.DistributedDataParallel | None, sync: bool) -> AbstractContextManager:
    """DDP averages gradients across ranks in a backward only when `sync`: inside an
    accumulation window, each rank keeps its own (DDP's no_sync())."""
    return ddp.no_sync() if ddp is not None and not sync else nullcontext()


def agreed_signal(stop: StopRequest, in_group: bool) -> int:
    """The signal to stop for (0: none). Under torchrun (`in_group`, the run's
    is_distributed(), passed in: asking again every step costs environment lookups) the
    ranks agree after every step (one tiny CPU all-reduce), so they all stop at the same
    step; only the agreed value counts, since a signal may land on one rank right after
    the vote."""
    signum = stop.signum or 0  # read once
    return distributed.max_across_ranks(signum) if in_group else signum


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics), which each rank's last
    training forward changed on its own, so that evaluation on every rank uses the model
    rank 0 checkpoints."""
    if distributed.is_distributed():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def check_ranks_agree(model: nn.Module) -> None:
    """Under torchrun, check that every rank ends with bitwise the same weights: DDP
    keeps them equal, unless code outside it changes one rank's model."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digests = distributed.gather(digest.hexdigest())
    if len(set(digests)) > 1:  # reported, not raised: rank 0's checkpoints are still sound
        log.error(f"The ranks ended with different weights (sha256 per rank: {digests}); DDP should keep them equal.")
    else:
        log.info(f"Final weights identical on all {len(digests)} ranks (sha256 {digests[0][:16]})")
