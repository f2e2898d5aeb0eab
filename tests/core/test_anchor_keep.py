"""``anchor_keep``: the authors' "low_energy" anchor halving (sthalles/sop, memory_bank.py), a uniform
half."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sop_plugin.core import SOPConfig, SOPObjective, build_sop_sets
from sop_plugin.core.sops import keep_random_sops


def authors_low_energy_weights(neigh_scores: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The sampling weights of the authors' rule, restated from memory_bank.py: [P, k] SE scores -> [P].

    Their "standard deviation" is the mean again, so the coefficient of variation is mean / |mean|.
    """
    means = neigh_scores.mean(dim=-1)
    coef_variation = (1 + 1 / (4 * pool_size)) * means / (means.abs() + 1e-8)
    return 1 / coef_variation


def test_authors_rule_weights_every_anchor_equally() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.rand(64, 8, generator=gen) * torch.rand(64, 1, generator=gen)  # very different spreads
        w = authors_low_energy_weights(scores, 1000)
        # equal up to the formula's 1e-8 guard: multinomial(w, P/2) without replacement is a uniform half
        assert float(w.max() / w.min()) < 1 + 1e-3


def _memory(n: int = 400, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_kept_sops_are_whole_sops_of_the_full_set_with_ses_searched_beside_all_anchors() -> None:
    memory = _memory()
    draws = [torch.randperm(400, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    anchors = torch.stack([d[:64] for d in draws])
    full = build_sop_sets(memory, anchors, 8, 0.1)
    kept = keep_random_sops(full, 32, torch.Generator().manual_seed(1))
    assert kept.num_sops == 32 and kept.supports.shape == (3, 32 * 9, 16) and kept.owner.shape == (32 * 9,)
    assert torch.equal(kept.owner, torch.arange(32).repeat_interleave(9))
    for t in range(3):
        full_rows = full.memory_index[t].view(64, 9)
        kept_rows = kept.memory_index[t].view(32, 9)
        # every kept SOP is one SOP of the full set, anchor and SEs together, in the full set's order
        pos = [int((full_rows[:, 0] == a).nonzero()) for a in kept_rows[:, 0]]
        assert pos == sorted(pos) and all(torch.equal(kept_rows[i], full_rows[q]) for i, q in enumerate(pos))
        assert torch.equal(kept.weights[t].view(32, 9), full.weights[t].view(64, 9)[pos])
        # the SEs were searched in the memory minus all 64 drawn anchors, dropped ones included
        assert not set(kept_rows[:, 1:].flatten().tolist()) & set(anchors[t].tolist())
        assert torch.equal(kept.supports[t], memory[kept.memory_index[t]])


def test_each_drawn_anchor_is_kept_half_the_time() -> None:
    memory = _memory()
    full = build_sop_sets(memory, torch.arange(64)[None], 2, 0.1)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(64)
    draws = 2000
    for _ in range(draws):
        kept = keep_random_sops(full, 32, gen)
        counts[kept.memory_index[0].view(32, 3)[:, 0]] += 1
    # binomial(2000, 0.5): sd 22.4; 5 sd over 64 anchors
    assert (counts - draws / 2).abs().max() < 5 * (draws * 0.25) ** 0.5
    with pytest.raises(ValueError, match="keep"):
        keep_random_sops(full, 1, gen)


def test_objective_assigns_to_the_kept_half_and_feeds_memory_view() -> None:
    sizes = {"dim": 16, "class_memory_size": 256, "patch_memory_size": 64, "class_num_anchors": 16}
    cfg = SOPConfig(
        **sizes, class_num_sets=2, class_num_supports=2, patch_num_anchors=8, anchor_keep=0.5, memory_view=1
    )
    obj = SOPObjective(cfg)
    assert obj.build_sets("class", 0).num_sops == 8 and obj.build_sets("patch", 0).num_sops == 8
    seeded = obj.build_sets("class", 3).memory_index
    assert torch.equal(obj.build_sets("class", 3).memory_index, seeded)
    s = F.normalize(torch.randn(2, 4, 16), dim=-1)
    t = F.normalize(torch.randn(2, 4, 16), dim=-1)
    obj(s, t, step=0)
    assert obj.last_step is not None and obj.last_step.class_teacher_probs.shape == (2, 2, 4, 8)
    assert torch.allclose(obj.class_memory.bank[:4], t[1])  # the second global view fed the memory
    # the authors halve only SOP sets with SEs: the patch level (k = 0 above) keeps all, with k > 0 half
    with_ses = SOPObjective(SOPConfig(**sizes, patch_num_anchors=8, patch_num_supports=1, anchor_keep=0.5))
    assert with_ses.build_sets("patch", 0).num_sops == 4
    with pytest.raises(ValueError, match="anchor_keep"):
        SOPConfig(anchor_keep=0.0).validate()
    with pytest.raises(ValueError, match="fewer than 2 of the 2 class anchors"):
        SOPConfig(class_num_anchors=2, anchor_keep=0.5).validate()
    with pytest.raises(ValueError, match="memory_view"):
        SOPConfig(memory_view=2).validate()
