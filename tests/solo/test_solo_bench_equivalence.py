"""The benchmark and the solo-learn binding train the same method: equal loss, gradients and memories.

From the same backbone and head weights, the same multi-crop batch, the same student masks and the
same step, the bench's Lightning module (``BenchModule.method_step``) and solo-learn's method class
(``training_step``) must produce the same method loss, the same gradients on every student
parameter and the same memories / centres after the step (to 1e-6). Both call
:mod:`sop_plugin.methods`; this test shows that the two hosts hand it the same tokens. It runs with
solo-learn's ``vit_tiny`` (3 channels in both hosts) and with ``vit_custom`` at ``in_chans: 1``, where
solo-learn gets a grey image as 3 equal channels (as it reads a grey PNG) and the bench its 1 channel.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

pytest.importorskip("solo", reason="solo-learn 1.0.6 is not installed (optional extra, see README)")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sop_plugin.bench.settings import bench_settings
from sop_plugin.bench.train.encoder import MaskedEncoder  # noqa: E402
from sop_plugin.bench.train.module import BenchModule  # noqa: E402
from sop_plugin.solo.ibot_method import IBOT  # noqa: E402
from sop_plugin.solo.sop_method import SOP  # noqa: E402
from tests.solo.soloutil import ADAMW  # noqa: E402
from tests.tinydata import bench_config  # noqa: E402

B, GLOBAL, LOCAL, PATCH = 4, 16, 8, 4
#: the method settings both hosts get, under the one vocabulary (bench ``<method>.*`` = solo
#: ``method_kwargs``)
SHARED = {
    "sop": {
        **{"dim": 32, "head_hidden_dim": 64, "head_num_layers": 3, "koleo_weight": 0.1, "seed": 3},
        **{"class_memory_size": 64, "class_num_sets": 2, "class_num_anchors": 8, "class_num_supports": 2},
        **{"anchor_keep": 0.5, "patch_memory_size": 64, "patch_num_anchors": 16, "memory_view": 1},
        **{"teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "retrieval": "torch"},
    },
    "ibot": {
        **{"dim": 32, "head_hidden_dim": 64, "num_prototypes": 48, "koleo_weight": 0.1},
        **{"teacher_temp": 0.06, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_steps": 10},
    },
}


GRID = {"img_size": GLOBAL, "patch_size": PATCH}
#: backbone name -> (solo-learn backbone kwargs, channels the bench feeds); both 192 wide with 3 heads
BACKBONES = {
    "vit_tiny": (GRID, 3),
    "vit_custom": (GRID | {"embed_dim": 192, "depth": 2, "num_heads": 3, "in_chans": 1}, 1),
}


def solo_model(method: str, backbone: str):
    cfg = OmegaConf.create(
        {
            "name": "equivalence",
            "method": method,
            "seed": 3,
            "backbone": {"name": backbone, "kwargs": BACKBONES[backbone][0]},
            # schedules in steps on both sides (solo's epoch counts off)
            "method_kwargs": {**SHARED[method], "clip_grad": 0.0, "warmup_teacher_temp_epochs": 0},
            "momentum": {"base_tau": 0.99, "final_tau": 1.0},
            "data": {"dataset": "custom", "num_classes": 5, "num_large_crops": 2, "num_small_crops": 2},
            "optimizer": {**ADAMW, "batch_size": B},
            "scheduler": {"name": "none"},
            "max_epochs": 1,
            "devices": 1,
        }
    )
    OmegaConf.set_struct(cfg, False)
    return (SOP if method == "sop" else IBOT)(cfg)


def bench_module(method: str, solo, chans: int, tmp_path: Path, tiny_data: Path) -> BenchModule:
    """The bench module of ``method`` with solo-learn's backbones, mask token and method weights."""
    overrides = [f"{method}.{k}={v}" for k, v in SHARED[method].items()]
    overrides += [f"crops.global_size={GLOBAL}", f"crops.local_size={LOCAL}", f"model.patch_size={PATCH}"]
    overrides += [f"{method}.masks.min_block=4", "seed=3", "model.embed_dim=192", "model.num_heads=3"]
    if method == "ibot":
        overrides.append("ibot.freeze_last_layer_fraction=0")
    cfg = bench_config(tmp_path, tiny_data, overrides)
    module = BenchModule(bench_settings(cfg).module(method, 10), chans, (0.5,) * chans, (0.5,) * chans)
    module.student = MaskedEncoder(copy.deepcopy(solo.backbone), initialize=False)
    module.teacher = MaskedEncoder(copy.deepcopy(solo.momentum_backbone), initialize=False)
    module.student.masked_vit.mask_token = torch.nn.Parameter(solo.mask_token.detach().clone())
    module.objective.load_state_dict(solo.method.state_dict())
    return module


def captured_output(method_module: torch.nn.Module) -> list:
    outputs: list = []
    method_module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    return outputs


def student_grads(named) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in named if p.grad is not None}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("method", ["sop", "ibot"])
def test_bench_and_solo_give_the_same_loss_gradients_and_state(
    method: str, backbone: str, tmp_path, tiny_data
) -> None:
    torch.manual_seed(0)
    solo = solo_model(method, backbone)
    chans = BACKBONES[backbone][1]
    bench = bench_module(method, solo, chans, tmp_path, tiny_data)
    solo.train()
    bench.train()
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(B, chans, GLOBAL, GLOBAL, generator=gen) for _ in range(2)]
    views += [torch.randn(B, chans, LOCAL, LOCAL, generator=gen) for _ in range(2)]
    masks = torch.rand(2, B, (GLOBAL // PATCH) ** 2, generator=gen) < 0.4
    image_ids = torch.arange(B) + 10

    bench_out = bench.method_step(views, masks, step=0, image_ids=image_ids)
    bench_out.loss.backward()
    solo._draw_masks = lambda crops, batch_idx: [masks[0], masks[1]]  # the same masks, not solo's own draw
    solo_outputs = captured_output(solo.method)
    solo_views = [v.expand(-1, 3, -1, -1) for v in views]  # solo-learn reads every image as RGB
    solo.training_step([image_ids, solo_views, torch.arange(B) % 5], 0)
    (solo_out,) = solo_outputs
    solo_out.loss.backward()

    assert math.isfinite(float(bench_out.loss)) and float(bench_out.loss) > 0
    torch.testing.assert_close(solo_out.loss, bench_out.loss, atol=1e-6, rtol=0)
    assert solo_out.logs.keys() == bench_out.logs.keys()
    for key, value in bench_out.logs.items():
        assert solo_out.logs[key] == pytest.approx(value, abs=1e-6), key

    bench_grads = student_grads(bench.student.masked_vit.vit.named_parameters())
    solo_grads = student_grads(solo.backbone.named_parameters())
    assert bench_grads.keys() == solo_grads.keys() and len(bench_grads) > 10
    for name, grad in bench_grads.items():
        torch.testing.assert_close(solo_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    head_b = student_grads(bench.objective.named_parameters())
    head_s = student_grads(solo.method.named_parameters())
    assert head_b.keys() == head_s.keys() and head_b
    for name, grad in head_b.items():
        torch.testing.assert_close(head_s[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    bench_token = bench.student.masked_vit.mask_token
    torch.testing.assert_close(solo.mask_token.grad, bench_token.grad, atol=1e-6, rtol=1e-5)

    # memories (SOP) and loss centres (iBOT) after the step, and nothing else in the method's state
    bench_state, solo_state = bench.objective.state_dict(), solo.method.state_dict()
    assert bench_state.keys() == solo_state.keys()
    for name, value in bench_state.items():
        torch.testing.assert_close(solo_state[name], value, atol=1e-6, rtol=0, msg=name)
    if method == "sop":
        memory = solo.method.objective.class_memory
        assert int(memory.ptr) == B  # the step enqueued one embedding per image
        assert torch.equal(solo.method.class_ids[:B], image_ids)
    else:
        assert float(solo.method.patch_loss.center.value.abs().sum()) > 0  # the patch centre moved
