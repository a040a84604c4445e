from __future__ import annotations

from dataclasses import dataclass

import pytest

from mixmag.registry import Registry


@dataclass(frozen=True)
class _Meta:
    dim: int


def test_register_get_and_describe() -> None:
    reg: Registry[object] = Registry("thing")

    @reg.register("alpha.v1", meta=_Meta(dim=8))
    class Alpha:
        pass

    assert reg.get("alpha.v1") is Alpha
    assert reg.meta("alpha.v1").dim == 8
    assert reg.describe() == [{"key": "alpha.v1", "dim": 8}]
    assert "alpha.v1" in reg and len(reg) == 1


def test_duplicate_and_uppercase_keys_raise() -> None:
    reg: Registry[object] = Registry("thing")
    reg.add("a", object())
    with pytest.raises(ValueError, match="duplicate"):
        reg.add("a", object())
    with pytest.raises(ValueError, match="lowercase"):
        reg.add("Bad", object())


def test_unknown_key_lists_close_matches() -> None:
    reg: Registry[object] = Registry("tile encoder")
    reg.add("virchow2", object())
    reg.add("uni2-h", object())
    with pytest.raises(KeyError, match="Did you mean: virchow2"):
        reg.get("virchow")
