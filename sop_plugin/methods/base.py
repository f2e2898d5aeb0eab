"""What every method gives both hosts: heads, teacher heads, its loss, schedules and masking policy.

A host (the bench's Lightning module, a solo-learn method class) runs the backbones and hands a
method the backbone tokens, the student's masks and the optimisation step; the method returns
the loss. Everything that makes a method what it is lives behind this interface, once, so what
the benchmark measures is what a solo-learn user trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from sop_plugin.methods.config import MaskConfig


@dataclass
class Tokens:
    """Backbone outputs of one step.

    Attributes:
        student_cls: [V, B, D] student [CLS] of all views, the 2 global views first.
        teacher_cls: [G, B, D] teacher [CLS] of the G global views (unmasked).
        student_patches: [G, B, N, D] student patch tokens of the masked global views (None without masks).
        teacher_patches: [G, B, N, D] teacher patch tokens of the unmasked global views.
        masks: [G, B, N] bool, True where the student saw a mask token.
    """

    student_cls: Tensor
    teacher_cls: Tensor
    student_patches: Tensor | None = None
    teacher_patches: Tensor | None = None
    masks: Tensor | None = None


@dataclass
class MethodOutput:
    """The loss (with its gradient) and detached scalars to log, under the method's own names."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


def teacher_of(student: nn.Module, factory: Callable[[], nn.Module]) -> nn.Module:
    """A fresh module from ``factory`` holding the student's weights, without gradients.

    (``deepcopy`` fails on lightly's weight-normalised DINO head.)
    """
    teacher = factory()
    teacher.load_state_dict(student.state_dict())
    return teacher.requires_grad_(False)


class Method(nn.Module):
    """One self-supervised method's training signal on top of a student/teacher backbone pair.

    Subclasses register with :func:`~sop_plugin.methods.registry.register_method`, set
    :attr:`config_class` (their typed settings) and :attr:`default_masks` (their authors' block
    masks; None: the method reads no patch tokens), and build ``student_head`` / ``teacher_head``.
    ``masks`` is None when this configuration needs no masked patches.
    """

    config_class: ClassVar[type]
    default_masks: ClassVar[MaskConfig | None] = None
    student_head: nn.Module
    teacher_head: nn.Module

    def __init__(self, masks: MaskConfig | None) -> None:
        super().__init__()
        self.masks = masks

    @property
    def uses_masks(self) -> bool:
        """Whether the host must mask the student's global views and pass patch tokens."""
        return self.masks is not None

    def train(self, mode: bool = True) -> Method:
        """Train mode for the student heads; the teacher heads stay in eval mode (deterministic teacher)."""
        super().train(mode)
        for _, teacher in self.momentum_pairs():
            teacher.eval()
        return self

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) modules of the method updated by the host's EMA."""
        return [(self.student_head, self.teacher_head)]

    def set_step_schedule(self, warmup_teacher_temp_steps: int, freeze_last_layer_steps: int = 0) -> None:
        """Schedule lengths in steps, for a host that learns them only when training starts (epochs)."""
        raise NotImplementedError

    def observe_batch(self, image_ids: Tensor) -> None:
        """Dataset indices [B] of the batch, before :meth:`forward` (default: ignored)."""

    def after_backward(self, step: int) -> None:
        """After the backward pass, before clipping and the optimiser step (default: nothing)."""

    def teacher_embedding(self, cls: Tensor) -> Tensor:
        """The teacher head's L2-normalised embedding [B, d] of backbone [CLS] tokens [B, D] (diagnostics)."""
        raise NotImplementedError

    def teacher_distribution(self, cls: Tensor, step: int) -> Tensor:
        """The teacher's probabilities [B, K] for [CLS] tokens [B, D], as its loss sees them at ``step``."""
        raise NotImplementedError

    def teacher_temperature(self, step: int) -> float:
        """The teacher temperature at ``step``."""
        raise NotImplementedError

    def explain_nonfinite(self, output: MethodOutput) -> str:
        """What is non-finite in this step, for the error message of a non-finite loss."""
        raise NotImplementedError

    @classmethod
    def describe(cls, config: Any, masks: MaskConfig | None) -> dict[str, str]:
        """The knobs that differ between methods, as text (results.json, reports)."""
        raise NotImplementedError

    def forward(self, tokens: Tokens, step: int) -> MethodOutput:  # noqa: D102
        raise NotImplementedError


def masks_text(masks: MaskConfig | None) -> str:
    """The mask settings as a report shows them."""
    if masks is None:
        return "none"
    return f"p {masks.prob:g}, ratio {masks.ratio[0]:g}-{masks.ratio[1]:g}"


def temperature_text(config: Any) -> str:
    """The teacher temperature of a method ``config``: ``warmup -> final`` with a warm-up, else the value."""
    warmup, final = config.warmup_teacher_temp, config.teacher_temp
    if config.warmup_teacher_temp_steps and warmup != final:
        return f"{warmup:g} -> {final:g}"
    return f"{final:g}"


def log_values(values: dict[str, Any]) -> dict[str, float]:
    """Detached floats of tensors and numbers, for logging."""
    return {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in values.items()}
