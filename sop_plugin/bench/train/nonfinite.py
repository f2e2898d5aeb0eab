"""Non-finite losses in the benchmark: where to resume from (the culprit is named by the method)."""

from __future__ import annotations


def checkpoint_hint(path: str | None, step: int | None) -> str:
    """Where to resume from, for the error message."""
    if path:
        where = f" (step {step})" if step is not None else ""
        return f"last good checkpoint: {path}{where}; resume with resume={path} after the fix"
    return "no checkpoint written yet (set train.checkpoint_every_n_steps to keep one)"
