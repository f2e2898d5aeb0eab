"""Typed settings of the methods other than SOP's own (``SOPConfig``): block masks and DINO/iBOT.

The field names are the one vocabulary of both hosts: the bench's ``<method>.*`` keys and
solo-learn's ``method_kwargs``. Schedules are in optimisation steps; a host that counts in
epochs or fractions of the run converts once (``docs/solo-learn.md``, "Names").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from sop_plugin.core.config import typed_fields


def _raise(errors: list[str], what: str) -> None:
    if errors:
        raise ValueError(f"invalid {what} settings:\n  - " + "\n  - ".join(errors))


@dataclass(frozen=True)
class MaskConfig:
    """Block-wise masks of the student's global views (iBOT's generator).

    ``prob``: chance that an image is masked at all; ``ratio``: (min, max) fraction of its
    patches; ``min_block``: smallest block, in patches.
    """

    prob: float = 0.5
    ratio: tuple[float, float] = (0.1, 0.5)
    min_block: int = 4

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], defaults: MaskConfig | None = None) -> MaskConfig:
        """Settings from a mapping; missing keys from ``defaults`` (the method's authors')."""
        base = dict(vars(defaults or cls()))
        return cls(**{**base, **typed_fields(cls, values, (), "masks")}).validate()

    def validate(self) -> MaskConfig:
        """Raise ``ValueError`` naming each wrong value."""
        errors = []
        if not 0.0 <= self.prob <= 1.0:
            errors.append(f"prob={self.prob} must be in [0, 1]")
        if not 0.0 <= self.ratio[0] <= self.ratio[1] < 1.0:
            errors.append(f"ratio={list(self.ratio)} must satisfy 0 <= min <= max < 1")
        if self.min_block < 1:
            errors.append(f"min_block={self.min_block} must be >= 1")
        _raise(errors, "masks")
        return self


@dataclass(frozen=True)
class DINOConfig:
    """DINO's settings (lightly's head and loss); iBOT adds :class:`IBOTConfig`'s patch weight."""

    display_name: ClassVar[str] = "DINO"
    head_hidden_dim: int = 2048
    dim: int = 256  # bottleneck before the prototype layer
    num_prototypes: int = 65536
    norm_last_layer: bool = False
    freeze_last_layer_steps: int = 0  # steps at the start without prototype updates
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9
    koleo_weight: float = 0.0  # lightly's KoLeo on the student's normalised bottleneck (DINOv2's)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], extra: Iterable[str] = ()) -> Any:
        """Build from a mapping of field names; keys in ``extra`` are the host's, others are errors."""
        return cls(**typed_fields(cls, values, extra, cls.display_name)).validate()

    def validate(self) -> Any:
        """Raise ``ValueError`` naming each wrong value and the fix."""
        errors = []
        for name in ("head_hidden_dim", "dim", "num_prototypes"):
            if getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)} must be > 0")
        for name in ("freeze_last_layer_steps", "warmup_teacher_temp_steps", "koleo_weight"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.center_momentum < 1.0:
            errors.append(f"center_momentum={self.center_momentum} must be in [0, 1)")
        errors += self._own_problems()
        _raise(errors, self.display_name)
        return self

    def _own_problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class IBOTConfig(DINOConfig):
    """iBOT's settings: DINO's plus the weight of the masked-patch loss (its lambda_2)."""

    display_name: ClassVar[str] = "iBOT"
    num_prototypes: int = 8192
    mim_weight: float = 1.0

    def _own_problems(self) -> list[str]:
        return [f"mim_weight={self.mim_weight} must be >= 0"] if self.mim_weight < 0 else []
