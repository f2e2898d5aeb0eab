"""iBOT-style block-wise masks for the student's global views.

Per image, with probability ``prob``, a target ratio r ~ U(ratio) of the patch
grid is covered by random rectangles (area and log-uniform aspect ratio drawn per
block) until the target is met or no block fits; other images stay unmasked.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import Tensor


class BlockMaskGenerator:
    """Draws boolean patch masks [B, H*W] (True = masked) from an explicit generator.

    The settings are a method's :class:`~sop_plugin.methods.MaskConfig` (its authors' defaults live there).

    Args:
        grid: patch grid (H, W) of a global view.
        prob: probability that an image is masked at all.
        ratio: (min, max) fraction of patches to mask in a masked image.
        min_block: smallest block area in patches.
        aspect: (min, max) block aspect ratio h / w.
        max_attempts: tries per block before giving up on the remaining target.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        prob: float,
        ratio: tuple[float, float],
        min_block: int,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        max_attempts: int = 10,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if not 0.0 <= ratio[0] <= ratio[1] < 1.0:
            raise ValueError(f"mask ratio must satisfy 0 <= min <= max < 1, got {ratio}")
        if grid[0] < 1 or grid[1] < 1:
            raise ValueError(f"patch grid must be positive, got {grid}")
        self.grid = grid
        self.prob = prob
        self.ratio = ratio
        self.min_block = max(1, min(min_block, grid[0] * grid[1]))
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.max_attempts = max_attempts

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def _fill(self, mask: np.ndarray, target: int, rng: random.Random) -> None:
        """Cover about ``target`` patches of the [H, W] ``mask`` with random rectangles."""
        h, w = self.grid
        count = 0
        while count < target:
            added = 0
            for _ in range(self.max_attempts):
                area = rng.uniform(self.min_block, max(self.min_block, target - count))
                ar = math.exp(rng.uniform(*self.log_aspect))
                bh = int(round(math.sqrt(area * ar)))
                bw = int(round(math.sqrt(area / ar)))
                if bh < 1 or bw < 1 or bh > h or bw > w:
                    continue
                top = rng.randrange(h - bh + 1)
                left = rng.randrange(w - bw + 1)
                block = mask[top : top + bh, left : left + bw]
                new = block.size - int(np.count_nonzero(block))
                if 0 < new <= target - count:
                    block[...] = True
                    added = new
                    break
            if added == 0:
                break
            count += added

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Masks for ``batch_size`` images: bool [B, H*W].

        One draw from ``generator`` seeds a Python RNG for the whole batch: the masks are a
        function of the generator's state (so of ``(seed, step)`` for our callers), and the
        per-block draws cost no torch dispatch (a 64-image batch takes well under a millisecond).
        """
        rng = random.Random(int(torch.randint(0, 2**62, (), generator=generator)))
        out = np.zeros((batch_size, *self.grid), dtype=bool)
        for i in range(batch_size):
            if rng.random() >= self.prob:
                continue
            r = rng.uniform(self.ratio[0], self.ratio[1])
            self._fill(out[i], int(r * self.num_patches), rng)
        return torch.from_numpy(out.reshape(batch_size, self.num_patches))
