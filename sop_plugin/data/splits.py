"""Split names and the deterministic hold-out split used where no official one exists."""

from __future__ import annotations

import numpy as np

# Accepted spellings -> canonical split name.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "test": "test",
    "val": "test",
    "valid": "test",
    "validation": "test",
    "unlabeled": "unlabeled",
    "unlabelled": "unlabeled",
}

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def canonical_split(split: str) -> str:
    """Map a user-facing split name (``val``, ``validation``...) to ``train``/``test``/``unlabeled``."""
    key = split.strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[key]


def stratified_holdout(
    labels: np.ndarray, split: str, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> np.ndarray:
    """Indices (sorted) of ``split`` in a per-class random hold-out.

    Within every class the indices are shuffled with ``numpy`` seeded by
    ``seed`` and the first ``round(n_class * test_fraction)`` go to ``test``,
    the rest to ``train``. The same arguments always give the same split, and
    the two splits are disjoint and cover every index.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    split = canonical_split(split)
    if split not in ("train", "test"):
        raise ValueError(f"hold-out splits are 'train' and 'test', got {split!r}")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * test_fraction))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
