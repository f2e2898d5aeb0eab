"""The one seed-mixing scheme of the project: every seeded stream is a function of integers."""

from __future__ import annotations

import hashlib

import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a hash, so nearby tuples give unrelated streams)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by :func:`mix_seed` of ``parts`` (same stream on every DDP rank)."""
    return torch.Generator().manual_seed(mix_seed(*parts))
