"""iBOT under DDP when one rank has no masked patch: 2 real gloo processes on the CPU.

Rank 0 masks about 40 % of its patches, rank 1 none. Both ranks must join the patch centre's
all-reduce (else rank 0 waits forever); rank 1's patch term must be finite and send no gradient;
the patch centre must move to the mean over the masked teacher tokens of all ranks, i.e. rank 0's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.reliability.ibot_ddp_worker import CFG, STEPS, train
from tests.reliability.test_ddp_core import _free_port

#: subprocess, DDP or full-fit tests: left out of `make test-fast`
pytestmark = pytest.mark.slow

#: both ranks must be done by then (start-up included); a rank stuck in a collective fails here
DEADLINE_S = 240


def _spawn_two_ranks(out: Path) -> None:
    """Run ``train`` on ranks 0 and 1; fail (and kill them) if they are not done within DEADLINE_S."""
    ctx = mp.start_processes(train, args=(2, out, _free_port()), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):  # raises if a rank fails
            if time.monotonic() > deadline:
                pytest.fail(f"the ranks did not finish within {DEADLINE_S} s: a rank hangs in a collective")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join()


def test_ibot_rank_without_masked_patches_joins_the_exact_patch_centre(tmp_path: Path) -> None:
    _spawn_two_ranks(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    momentum = CFG["center_momentum"]
    for step in range(STEPS):
        masked, maskless = ranks[0][step], ranks[1][step]
        assert masked["masks"].any() and not maskless["masks"].any()
        # the maskless rank: a finite loss, a zero patch term, no gradient into its patch tokens
        assert torch.isfinite(maskless["loss"]) and maskless["loss_mim"] == 0.0
        assert not maskless["s_patch_grad"].any()
        assert maskless["teacher_masked"].shape == (0, CFG["num_prototypes"])
        # the masked rank: a real patch term, whose gradient reaches exactly its masked tokens
        assert torch.isfinite(masked["loss"]) and masked["loss_mim"] > 0
        touched = masked["s_patch_grad"].abs().sum(-1) > 0
        assert torch.equal(touched, masked["masks"])
        # the centre after the step, on both ranks: momentum update with the mean of rank 0's masked tokens
        # (lightly's own per-rank mean would average in rank 1's empty mean, NaN)
        expected = momentum * masked["centre_before"] + (1 - momentum) * masked["teacher_masked"].mean(0)
        for rank in ranks:
            assert torch.equal(rank[step]["centre_before"], masked["centre_before"])
            assert torch.allclose(rank[step]["centre_after"], expected, atol=1e-6, rtol=0), step
        # DDP averaged the head gradients: the same on both ranks
        assert torch.equal(masked["head_grad"], maskless["head_grad"])
    assert ranks[0][1]["centre_before"].abs().max() > 0  # step 1 started from step 0's centre, not from zero
