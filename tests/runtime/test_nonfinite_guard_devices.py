"""What both hosts share: the non-finite guard and device counting (no training run needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sop_plugin.runtime import NonFiniteGuard, NonFiniteLossError, num_devices, world_size


class Memory(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(4, 2))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))


def _step(guard: NonFiniteGuard, memory: Memory, loss: float, step: int) -> bool:
    guard.snapshot(memory)
    memory.bank.add_(1.0)  # the step's memory update
    memory.ptr.add_(1)
    return guard.check(torch.tensor(loss), step, lambda: "class loss nan", lambda: "no checkpoint yet")


def test_device_counting():
    assert [num_devices(d) for d in (1, 4, [0, 1], "2", "0,1", "auto", -1)] == [1, 4, 2, 2, 2, 1, 1]
    assert world_size([0, 1, 2], 2) == 6 and world_size("auto", None) == 1


def test_guard_passes_finite_losses_and_stops_with_the_culprit():
    guard, memory = NonFiniteGuard("stop", settings="method_kwargs.", name="SOP"), Memory()
    assert _step(guard, memory, 1.0, 0) and not guard.skip
    with pytest.raises(NonFiniteLossError) as info:
        _step(guard, memory, float("nan"), 1)
    message = str(info.value)
    assert message.startswith("non-finite SOP loss at step 1: class loss nan; no checkpoint yet.")
    assert "set method_kwargs.on_nonfinite=skip" in message


def test_guard_skip_restores_buffers_and_gives_up_after_consecutive_skips():
    guard, memory = NonFiniteGuard("skip", max_consecutive_skips=2), Memory()
    assert _step(guard, memory, 1.0, 0)
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    with pytest.warns(UserWarning, match="train.on_nonfinite=skip: skipped step 1"):
        assert not _step(guard, memory, float("inf"), 1)
    assert guard.skip and guard.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in memory.state_dict().items())
    param = nn.Parameter(torch.ones(1))
    param.grad = torch.ones(1)
    guard.drop_gradients(torch.optim.SGD([param], lr=1.0))
    assert param.grad is None  # a skipped step updates no parameter
    assert _step(guard, memory, 1.0, 2) and guard.consecutive_skips == 0  # a good step resets the count
    with pytest.warns(UserWarning):
        _step(guard, memory, float("nan"), 3)
        _step(guard, memory, float("nan"), 4)
    with pytest.raises(
        NonFiniteLossError, match=r"2 consecutive steps were already skipped \(train.max_consecutive_skips\)"
    ):
        _step(guard, memory, float("nan"), 5)
    assert guard.state_dict() == {"skipped_steps": 3, "consecutive_skips": 2}
    restored = NonFiniteGuard("skip")
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


def test_guard_rejects_bad_settings_listing_each():
    assert NonFiniteGuard.problems("ignore", 0, "method_kwargs.") == [
        "method_kwargs.on_nonfinite='ignore'; choose one of ['stop', 'skip']",
        "method_kwargs.max_consecutive_skips=0 must be >= 1",
    ]
    with pytest.raises(ValueError, match="train.on_nonfinite='ignore'"):
        NonFiniteGuard("ignore")
