"""One implementation of each method's training signal, for both hosts (the bench and solo-learn).

Importing this package registers ``sop``, ``dino`` and ``ibot`` (each module registers itself).
"""

from sop_plugin.methods import dino, ibot, sop  # noqa: F401  (registration)
from sop_plugin.methods.base import Method, MethodOutput, Tokens
from sop_plugin.methods.build import build_method, describe_method, method_config, method_masks
from sop_plugin.methods.config import DINOConfig, IBOTConfig, MaskConfig
from sop_plugin.methods.registry import method_class, method_names, register_method

__all__ = [
    "DINOConfig",
    "IBOTConfig",
    "MaskConfig",
    "Method",
    "MethodOutput",
    "Tokens",
    "build_method",
    "describe_method",
    "method_class",
    "method_config",
    "method_masks",
    "method_names",
    "register_method",
]
