"""How spread SOP's class memory is, read straight from a checkpoint (no model is built).

Usage: python -m sop_plugin.bench.results.memory_spread CKPT [--json OUT] [--k 8]
           [--key class_memory.bank] [--all-rows]
e.g.   python -m sop_plugin.bench.results.memory_spread \
           runs/bench/<run>/sop/checkpoints/last.ckpt --json spread.json

Loads CKPT with the safe loader (``sop_plugin.runtime.load_checkpoint``; ``--trust-checkpoint`` for
files you made that hold other types), takes the state-dict tensor whose key ends in ``--key`` and,
when the checkpoint has one (sop-bench's ``objective.class_ids``), keeps only the rows filled with
real embeddings (id >= 0). Prints the effective rank, the mean pairwise cosine and the mean cosine
of a row to its k nearest other rows of the L2-normalised rows, computed with
``sop_plugin.bench.evals.collapse`` (definitions: docs/evaluation.md, "Collapse diagnostics"). A randomly
initialised network's head outputs give about 32 / 0.75 / 0.985 on Fashion-MNIST (issue 12).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sop_plugin.bench.evals.collapse import effective_rank, filled_rows, knn_cosine, mean_pairwise_cosine
from sop_plugin.runtime import load_checkpoint


def find_tensor(
    state: Mapping[str, Any], suffix: str, rows: int | None = None
) -> tuple[str, torch.Tensor] | None:
    """The one tensor whose key ends in ``suffix`` (with ``rows`` rows, if given); None when there is none.

    Raises ``ValueError`` when several keys match (name the one you mean with a longer suffix).
    """
    hits = [
        (k, v)
        for k, v in state.items()
        if k.endswith(suffix)
        and isinstance(v, torch.Tensor)
        and (rows is None or (v.ndim >= 1 and v.shape[0] == rows))
    ]
    if len(hits) > 1:
        raise ValueError(f"several keys end in {suffix!r}: {sorted(k for k, _ in hits)}; pass a longer --key")
    return hits[0] if hits else None


def memory_spread(
    path: str | Path,
    key: str = "class_memory.bank",
    k: int = 8,
    all_rows: bool = False,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """The spread statistics of the memory under ``key`` in the checkpoint ``path``, as a dict."""
    ckpt = load_checkpoint(path, trust_checkpoint=trust_checkpoint)
    state = ckpt.get("state_dict", ckpt)
    found = find_tensor(state, key)
    if found is None:
        raise ValueError(f"{path}: no state-dict key ends in {key!r} (is it a SOP checkpoint?)")
    bank_key, bank = found
    if bank.ndim != 2:
        raise ValueError(f"{path}: {bank_key} has shape {tuple(bank.shape)}, not [rows, dim]")
    ids = None if all_rows else find_tensor(state, "class_ids", rows=bank.shape[0])
    rows = filled_rows(bank.float(), ids[1] if ids else None)
    return {
        "checkpoint": str(path),
        "key": bank_key,
        "global_step": ckpt.get("global_step"),
        "memory_rows": int(bank.shape[0]),
        "rows": int(rows.shape[0]),
        "filled_only": ids is not None,
        "effective_rank": effective_rank(rows),
        "mean_pairwise_cosine": mean_pairwise_cosine(rows),
        "knn_k": k,
        "knn_cosine": knn_cosine(rows, k) if rows.shape[0] >= 2 else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", type=Path, help="a sop-bench (or solo-learn SOP) checkpoint, e.g. last.ckpt"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--k", type=int, default=8, help="neighbours of the k-NN cosine (default 8)")
    parser.add_argument("--key", default="class_memory.bank", help="state-dict key suffix of the memory")
    parser.add_argument("--all-rows", action="store_true", help="every row, even those never filled")
    parser.add_argument(
        "--trust-checkpoint", action="store_true", help="full unpickler (only for your own files)"
    )
    args = parser.parse_args(argv)
    try:
        out = memory_spread(args.checkpoint, args.key, args.k, args.all_rows, args.trust_checkpoint)
    except ValueError as err:  # CheckpointError included
        print(f"memory_spread: {err}", file=sys.stderr)
        return 2
    which = f"{out['rows']} of {out['memory_rows']} rows" + (" (filled)" if out["filled_only"] else "")
    print(f"{out['key']} in {out['checkpoint']} (step {out['global_step']}): {which}")
    for label, value, digits in (
        ("effective rank", out["effective_rank"], 2),
        ("mean pairwise cosine", out["mean_pairwise_cosine"], 4),
        (f"mean {args.k}-NN cosine", out["knn_cosine"], 4),
    ):
        print(f"{label:<23}{value:.{digits}f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        finite = {key: None if isinstance(v, float) and not math.isfinite(v) else v for key, v in out.items()}
        args.json.write_text(json.dumps(finite, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
