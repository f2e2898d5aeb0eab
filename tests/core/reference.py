"""A deliberately naive float64 re-implementation of the method (SOP sets, assignment, losses), for the tests.

Loops over anchors and rows; shares no code with sop_plugin.core.
"""

from __future__ import annotations

import math

import torch


def ref_build(memory: torch.Tensor, anchor_idx: list[int], k: int, eps: float):
    mem = memory.double()
    p = len(anchor_idx)
    pool = [i for i in range(mem.shape[0]) if i not in set(anchor_idx)]
    rows, weights, owners = [], [], []
    for pos, a in enumerate(anchor_idx):
        rows.append(mem[a])
        weights.append(1.0 - eps)
        owners.append(pos)
        sims = sorted(((float(mem[a] @ mem[j]), j) for j in pool), key=lambda t: -t[0])[:k]
        for s, j in sims:
            rows.append(mem[j])
            weights.append(min(max(s, 0.0), 1.0))
            owners.append(pos)
    d_mat = torch.stack(rows)
    y = torch.zeros(len(rows), p, dtype=torch.float64)
    for r, (w, o) in enumerate(zip(weights, owners)):
        for q in range(p):
            y[r, q] = w if q == o else (1.0 - w) / (p - 1)
    return d_mat, y


def ref_assign(z: torch.Tensor, d_mat: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    out = torch.zeros(z.shape[0], y.shape[1], dtype=torch.float64)
    for n in range(z.shape[0]):
        logits = [float(z[n].double() @ d_mat[r]) / tau for r in range(d_mat.shape[0])]
        m = max(logits)
        e = [math.exp(v - m) for v in logits]
        s = sum(e)
        for r in range(d_mat.shape[0]):
            out[n] += (e[r] / s) * y[r]
    return out


def ref_ce(t: torch.Tensor, s: torch.Tensor) -> float:
    return float(-(t * s.clamp_min(1e-12).log()).sum())


def ref_global_loss(s_probs: list[list[torch.Tensor]], t_probs: list[list[torch.Tensor]]) -> float:
    """s_probs[set][view] [B, P]; t_probs[set][gview] [B, P]."""
    total, count = 0.0, 0
    for s_set, t_set in zip(s_probs, t_probs):
        for i, t_view in enumerate(t_set):
            for j, s_view in enumerate(s_set):
                if i == j:
                    continue
                for b in range(t_view.shape[0]):
                    total += ref_ce(t_view[b], s_view[b])
                    count += 1
    return total / count


def ref_mim_loss(s_probs, t_probs, masks) -> float:
    """s_probs[set][g] [B, N, P]; masks [G, B, N] bool; per-image mean, sum / (G*B), mean sets."""
    total = 0.0
    g_n, b_n = masks.shape[0], masks.shape[1]
    for s_set, t_set in zip(s_probs, t_probs):
        acc = 0.0
        for g in range(g_n):
            for b in range(b_n):
                idx = [n for n in range(masks.shape[2]) if masks[g, b, n]]
                if not idx:
                    continue
                acc += sum(ref_ce(t_set[g][b, n], s_set[g][b, n]) for n in idx) / len(idx)
        total += acc / (g_n * b_n)
    return total / len(s_probs)
