"""Both SOP losses and SOPObjective against the float64 loop reference."""

import pytest
import torch
from lightly.loss import KoLeoLoss

from sop_plugin.core import SOPConfig, SOPObjective, sop_global_loss, sop_mim_loss
from tests.core.reference import ref_assign, ref_build, ref_global_loss, ref_mim_loss


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def small_cfg(**kw) -> SOPConfig:
    base = dict(
        dim=32,
        class_memory_size=256,
        patch_memory_size=128,
        class_num_sets=2,
        class_num_anchors=8,
        class_num_supports=3,
        patch_num_sets=2,
        patch_num_anchors=6,
        patch_num_supports=2,
        seed=3,
    )
    base.update(kw)
    return SOPConfig(**base)


def test_global_loss_matches_reference_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.softmax(torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64), -1)
    t = torch.softmax(torch.randn(3, 2, 5, 7, generator=g, dtype=torch.float64), -1)
    ref = ref_global_loss(
        [[s[i, v] for v in range(4)] for i in range(3)], [[t[i, v] for v in range(2)] for i in range(3)]
    )
    assert abs(float(sop_global_loss(s, t)) - ref) < 1e-10


def test_mim_loss_matches_reference() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.softmax(torch.randn(2, 2, 3, 6, 5, generator=g, dtype=torch.float64), -1)
    t = torch.softmax(torch.randn(2, 2, 3, 6, 5, generator=g, dtype=torch.float64), -1)
    masks = torch.rand(2, 3, 6, generator=g) < 0.4
    masks[1, 2] = False  # an unmasked image counts as zero
    m = masks.reshape(-1)
    image_index = torch.arange(6).repeat_interleave(6)[m]
    got = sop_mim_loss(s.reshape(2, -1, 5)[:, m], t.reshape(2, -1, 5)[:, m], image_index, 6)
    s_sets = [[s[i, gv] for gv in range(2)] for i in range(2)]
    t_sets = [[t[i, gv] for gv in range(2)] for i in range(2)]
    ref = ref_mim_loss(s_sets, t_sets, masks)
    assert abs(float(got) - ref) < 1e-10


def test_mim_loss_no_masked_patch_is_zero() -> None:
    empty = torch.zeros(1, 0, 4)
    assert float(sop_mim_loss(empty, empty.detach(), torch.zeros(0, dtype=torch.long), 3)) == 0.0


def _objective_reference(obj: SOPObjective, s_cls, t_cls, s_p, t_p, masks, step) -> tuple[float, float]:
    c = obj.cfg
    t_temp = obj.teacher_temperature(step)
    cls_sets = obj.build_sets("class", step)
    patch_sets = obj.build_sets("patch", step)
    s_all, t_all = [], []
    for sop in cls_sets:
        anchor_rows = sop.memory_index.view(c.class_num_anchors, -1)[:, 0].tolist()
        d_ref, y_ref = ref_build(obj.class_memory.bank, anchor_rows, c.class_num_supports, c.smoothing)
        s_all.append([ref_assign(s_cls[v], d_ref, y_ref, c.student_temp) for v in range(s_cls.shape[0])])
        t_all.append([ref_assign(t_cls[v], d_ref, y_ref, t_temp) for v in range(t_cls.shape[0])])
    cls_ref = ref_global_loss(s_all, t_all)
    sp_all, tp_all = [], []
    for sop in patch_sets:
        anchor_rows = sop.memory_index.view(c.patch_num_anchors, -1)[:, 0].tolist()
        d_ref, y_ref = ref_build(obj.patch_memory.bank, anchor_rows, c.patch_num_supports, c.smoothing)
        images = range(s_p.shape[1])
        s_views = [[ref_assign(s_p[g, b], d_ref, y_ref, c.student_temp) for b in images] for g in range(2)]
        t_views = [[ref_assign(t_p[g, b], d_ref, y_ref, t_temp) for b in images] for g in range(2)]
        sp_all.append([torch.stack(v) for v in s_views])
        tp_all.append([torch.stack(v) for v in t_views])
    return cls_ref, ref_mim_loss(sp_all, tp_all, masks)


def test_objective_matches_reference() -> None:
    obj = SOPObjective(small_cfg(warmup_teacher_temp_steps=10)).double()
    s_cls, t_cls = unit(4, 5, 32, seed=1), unit(2, 5, 32, seed=2)
    s_p, t_p = unit(2, 5, 9, 32, seed=3), unit(2, 5, 9, 32, seed=4)
    masks = torch.rand(2, 5, 9, generator=torch.Generator().manual_seed(5)) < 0.5
    cls_ref, mim_ref = _objective_reference(obj, s_cls, t_cls, s_p, t_p, masks, step=4)
    out = obj(s_cls, t_cls, s_p, t_p, masks, step=4, update_memory=False)
    assert abs(out.teacher_temp - (0.04 + 0.03 * 0.4)) < 1e-12
    assert abs(float(out.cls_loss) - cls_ref) < 1e-5
    assert abs(float(out.mim_loss) - mim_ref) < 1e-5
    assert abs(float(out.loss) - (cls_ref + mim_ref)) < 1e-5


def test_objective_gradients_reach_student_only() -> None:
    obj = SOPObjective(small_cfg())
    s_cls = unit(4, 5, 32, seed=1).float().requires_grad_()
    t_cls = unit(2, 5, 32, seed=2).float().requires_grad_()
    s_p = unit(2, 5, 9, 32, seed=3).float().requires_grad_()
    t_p = unit(2, 5, 9, 32, seed=4).float().requires_grad_()
    masks = torch.ones(2, 5, 9, dtype=torch.bool)
    out = obj(s_cls, t_cls, s_p, t_p, masks, step=0)
    out.loss.backward()
    assert s_cls.grad is not None and s_cls.grad.abs().sum() > 0
    assert s_p.grad is not None and s_p.grad.abs().sum() > 0
    assert t_cls.grad is None and t_p.grad is None
    assert not obj.class_memory.bank.requires_grad and obj.class_memory.bank.grad is None


def test_objective_updates_memories_and_same_step_same_sets() -> None:
    obj = SOPObjective(small_cfg())
    a = [s.memory_index for s in obj.build_sets("class", 7)]
    b = [s.memory_index for s in obj.build_sets("class", 7)]
    c = [s.memory_index for s in obj.build_sets("class", 8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    t_cls = unit(2, 5, 32, seed=2).float()
    t_p = unit(2, 5, 9, 32, seed=4).float()
    obj(unit(4, 5, 32, seed=1).float(), t_cls, t_p, t_p, torch.ones(2, 5, 9, dtype=torch.bool), step=0)
    torch.testing.assert_close(obj.class_memory.bank[:5], t_cls[0])
    assert int(obj.class_memory.ptr) == 5 and int(obj.patch_memory.ptr) == 5
    # every enqueued patch row is one of that image's teacher patches (view 0)
    for b in range(5):
        row = obj.patch_memory.bank[b]
        assert torch.isclose(t_p[0, b] @ row, torch.tensor(1.0), atol=1e-5).any()


def test_objective_without_patches_and_koleo() -> None:
    with pytest.raises(ValueError, match="koleo_weight=0.1 needs a KoLeo loss module"):
        SOPObjective(small_cfg(koleo_weight=0.1))
    obj = SOPObjective(small_cfg(koleo_weight=0.1), koleo=KoLeoLoss())
    out = obj(unit(2, 5, 32, seed=1).float(), unit(2, 5, 32, seed=2).float(), step=0)
    assert float(out.mim_loss) == 0.0 and float(out.koleo_loss) != 0.0
    assert 0 < out.stats["sop_usage_entropy"] <= 1.0 + 1e-6


def test_koleo_term_is_lightlys_koleo_of_the_global_views() -> None:
    obj = SOPObjective(small_cfg(koleo_weight=0.5), koleo=KoLeoLoss())
    s_cls = unit(2, 5, 32, seed=1).float()
    out = obj(s_cls, unit(2, 5, 32, seed=2).float(), step=0)
    expected = (KoLeoLoss()(s_cls[0]) + KoLeoLoss()(s_cls[1])) / 2
    torch.testing.assert_close(out.koleo_loss, expected)
    torch.testing.assert_close(out.loss, out.cls_loss + 0.5 * expected)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"student_temp": 0.0}, "student_temp"),
        ({"teacher_temp": -1.0}, "teacher_temp"),
        ({"class_num_anchors": 100}, "class_num_anchors x"),
        ({"patch_num_anchors": 1}, "patch_num_anchors=1"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"retrieval": "annoy"}, "retrieval"),
        ({"anchor_selection": "dense"}, "anchor_selection"),
        ({"mim_weight": -1}, "mim_weight"),
    ],
)
def test_config_validation_messages(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small_cfg(**kw).validate()


def test_config_rejects_batch_larger_than_memory() -> None:
    with pytest.raises(ValueError, match="global batch 1000 exceeds"):
        small_cfg().validate(global_batch_size=1000)


def test_objective_rejects_wrong_dim_and_shapes() -> None:
    obj = SOPObjective(small_cfg())
    with pytest.raises(ValueError, match="dim"):
        obj(torch.randn(2, 3, 16), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="dense patch outputs"):
        obj(
            unit(2, 3, 32, seed=0).float(),
            unit(2, 3, 32, seed=0).float(),
            unit(2, 3, 4, 32, seed=0).float(),
            unit(2, 3, 4, 32, seed=0).float(),
            torch.ones(2, 3, 5, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="masks must be bool"):
        obj(
            unit(2, 3, 32, seed=0).float(),
            unit(2, 3, 32, seed=0).float(),
            unit(2, 3, 4, 32, seed=0).float(),
            unit(2, 3, 4, 32, seed=0).float(),
            torch.ones(2, 3, 4),
        )


def test_preselected_patches_equal_dense_patches() -> None:
    dense, pre = SOPObjective(small_cfg()), SOPObjective(small_cfg())
    s_cls, t_cls = unit(4, 5, 32, seed=1).float(), unit(2, 5, 32, seed=2).float()
    s_p, t_p = unit(2, 5, 9, 32, seed=3).float(), unit(2, 5, 9, 32, seed=4).float()
    masks = torch.rand(2, 5, 9, generator=torch.Generator().manual_seed(5)) < 0.5
    out_dense = dense(s_cls, t_cls, s_p, t_p, masks, step=3)
    masked, memory = pre.select_patches(masks, step=3)
    out_pre = pre(
        s_cls,
        t_cls,
        s_p.reshape(-1, 32)[masked],
        t_p.reshape(-1, 32)[masked],
        masks,
        step=3,
        memory_patches=t_p[0].reshape(-1, 32)[memory],
    )
    assert torch.allclose(out_dense.loss, out_pre.loss)
    assert torch.equal(dense.patch_memory.bank, pre.patch_memory.bank)
    with pytest.raises(ValueError, match="one row per masked patch"):
        pre(s_cls, t_cls, s_p.reshape(-1, 32)[:3], t_p.reshape(-1, 32)[:3], masks, step=3)
