"""SOPConfig: every SOP setting under one name, the same in core, the bench (``sop.*``) and solo-learn
(``method_kwargs``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS


@dataclass
class SOPConfig:
    """Every SOP hyper-parameter; defaults follow the paper and the authors' code (docs/design-notes.md)."""

    dim: int = 256  # head bottleneck = memory dimension
    head_hidden_dim: int = 2048
    head_num_layers: int = 3
    class_memory_size: int = 65536
    patch_memory_size: int = 8192
    class_num_sets: int = 4
    class_num_anchors: int = 64
    class_num_supports: int = 8
    # fraction of the drawn anchors kept where SOPs have SEs (the authors: 0.5, a "random half")
    anchor_keep: float = 1.0
    patch_num_sets: int = 1
    patch_num_anchors: int = 512
    patch_num_supports: int = 0
    smoothing: float = 0.1
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    mim_weight: float = 1.0
    koleo_weight: float = 0.0
    anchor_selection: str = "uniform"
    memory_view: int = 0  # the global view whose teacher embeddings feed the memories (the authors: 1)
    retrieval: str = "torch"
    seed: int = 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], extra: Iterable[str] = ()) -> SOPConfig:
        """Build from a mapping of field names (a hydra/OmegaConf node works), cast and validated;
        keys in ``extra`` belong to the host and are ignored, any other unknown key is an error."""
        return cls(**typed_fields(cls, values, extra, "SOP")).validate()

    def validate(self, global_batch_size: int | None = None) -> SOPConfig:
        """Raise ``ValueError`` naming the setting and the fix for any inconsistent value."""
        errors: list[str] = []
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}={getattr(self, name)} must be > 0")
        if not 0.0 <= self.smoothing < 1.0:
            errors.append(f"smoothing={self.smoothing} must be in [0, 1)")
        for name in ("mim_weight", "koleo_weight", "warmup_teacher_temp_steps"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("dim", "head_hidden_dim", "head_num_layers"):
            if getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)} must be >= 1")
        for level in ("class", "patch"):
            size = getattr(self, f"{level}_memory_size")
            p = getattr(self, f"{level}_num_anchors")
            k = getattr(self, f"{level}_num_supports")
            t = getattr(self, f"{level}_num_sets")
            if t < 1:
                errors.append(f"{level}_num_sets={t} must be >= 1")
            if p < 2:
                errors.append(f"{level}_num_anchors={p} must be >= 2 (a SOP set needs two regions)")
            if k < 0:
                errors.append(f"{level}_num_supports={k} must be >= 0")
            if p * (k + 1) > size:
                errors.append(
                    f"{level}_num_anchors x ({level}_num_supports + 1) = {p * (k + 1)} exceeds "
                    f"{level}_memory_size={size}: lower anchors/supports or enlarge the memory"
                )
            if global_batch_size is not None and global_batch_size > size:
                errors.append(
                    f"global batch {global_batch_size} exceeds {level}_memory_size={size}: "
                    f"the memory must hold at least one step of embeddings"
                )
            if k > 0 and round(self.anchor_keep * p) < 2:
                keep = f"anchor_keep={self.anchor_keep}"
                errors.append(f"{keep} keeps fewer than 2 of the {p} {level} anchors: raise it")
        if not 0.0 < self.anchor_keep <= 1.0:
            errors.append(f"anchor_keep={self.anchor_keep} must be in (0, 1]")
        if self.memory_view not in (0, 1):
            errors.append(f"memory_view={self.memory_view} must be 0 or 1 (one of the two global views)")
        for name, registry in (("anchor_selection", ANCHOR_SELECTORS), ("retrieval", RETRIEVAL_BACKENDS)):
            if getattr(self, name) not in registry:
                errors.append(f"{name}={getattr(self, name)!r}; choose one of {registry.names()}")
        if errors:
            raise ValueError("invalid SOP settings:\n  - " + "\n  - ".join(errors))
        return self


def typed_fields(cls: type, values: Mapping[str, Any], extra: Iterable[str], what: str) -> dict[str, Any]:
    """The fields of dataclass ``cls`` found in ``values``, cast to their declared types; keys in
    ``extra`` are the host's and skipped. Unknown keys (typos) and bad values raise one ``ValueError``."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields) - set(extra))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {sorted(set(fields) | set(extra))}")
    kwargs: dict[str, Any] = {}
    errors: list[str] = []
    for name, kind in fields.items():
        if name not in values:
            continue
        try:
            kwargs[name] = _cast(values[name], kind)
        except (TypeError, ValueError):
            errors.append(f"{name}={values[name]!r} must be of type {kind}")
    if errors:
        raise ValueError(f"invalid {what} settings:\n  - " + "\n  - ".join(errors))
    return kwargs


def _cast(value: Any, kind: str) -> Any:
    """``value`` as the declared field type ``kind`` (int, float, str, bool or a 2-tuple of floats)."""
    if kind == "int":
        if float(value) != int(float(value)):
            raise ValueError("not a whole number")
        return int(float(value))
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("not true or false")
        return value
    pair = tuple(float(v) for v in value)
    if len(pair) != 2:
        raise ValueError("not a pair")
    return pair
