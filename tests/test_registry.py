"""sop_plugin.registry: the one registry style (methods, datasets, retrieval backends, anchor rules)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sop_plugin.core.anchors import ANCHOR_SELECTORS
from sop_plugin.core.retrieval import RETRIEVAL_BACKENDS, register_retrieval
from sop_plugin.data import DATASETS, register_dataset
from sop_plugin.methods import method_names, register_method
from sop_plugin.methods.registry import METHODS
from sop_plugin.registry import Registry


def test_decorator_registers_and_returns_the_object() -> None:
    widgets: Registry[type] = Registry("widget")

    @widgets.register("b")
    class B:
        pass

    def a() -> None:
        pass

    assert widgets.register("a")(a) is a
    assert widgets.get("b") is B and widgets.get("a") is a
    assert "a" in widgets and "c" not in widgets
    assert widgets.names() == ["a", "b"] == list(widgets) and len(widgets) == 2


def test_duplicate_name_is_an_error_naming_registry_and_name() -> None:
    widgets: Registry[int] = Registry("widget")
    widgets.register("one")(1)
    with pytest.raises(ValueError, match=r"widget registry: 'one' is already registered"):
        widgets.register("one")(2)
    assert widgets.get("one") == 1


def test_unknown_name_lists_the_known_names() -> None:
    widgets: Registry[int] = Registry("widget")
    widgets.register("small")(1)
    widgets.register("large")(2)
    listing = r"unknown widget 'smal'; choose one of \['large', 'small'\]"
    with pytest.raises(ValueError, match=listing) as info:
        widgets.get("smal")
    assert "Did you mean 'small'?" in str(info.value)


def _noop(*args: object, **kwargs: object) -> None:
    return None


#: (registry, a registered name, a call that registers that name again)
DUPLICATES: dict[str, tuple[Registry, str, Callable[[], object]]] = {
    "method": (METHODS, "sop", lambda: register_method("sop")(type("Again", (), {}))),
    "dataset": (DATASETS, "mnist", lambda: register_dataset("mnist", "again")(_noop)),
    "retrieval backend": (RETRIEVAL_BACKENDS, "torch", lambda: register_retrieval("torch")(_noop)),
    "anchor selection": (ANCHOR_SELECTORS, "uniform", lambda: ANCHOR_SELECTORS.register("uniform")(_noop)),
}


@pytest.mark.parametrize("kind", list(DUPLICATES))
def test_every_registry_refuses_a_duplicate(kind: str) -> None:
    registry, name, register_again = DUPLICATES[kind]
    before = registry.get(name)
    with pytest.raises(ValueError, match=f"{kind} registry: '{name}' is already registered"):
        register_again()
    assert registry.get(name) is before


def test_package_registries_are_filled_by_their_implementations() -> None:
    assert method_names() == ["dino", "ibot", "sop"]
    assert RETRIEVAL_BACKENDS.names() == ["auto", "faiss", "torch"]
    assert ANCHOR_SELECTORS.names() == ["uniform"]
    assert {"fashion-mnist", "mnist", "cifar10"} <= set(DATASETS)
