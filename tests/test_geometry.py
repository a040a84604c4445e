from __future__ import annotations

import numpy as np
import pytest

from mixmag.geometry import RegionSpec, magnification_label, parse_magnification


def test_default_spec_is_21_tokens_in_paper_order() -> None:
    spec = RegionSpec()
    assert spec.mpps == (2.0, 1.0, 0.5)
    assert spec.n_tokens == 21
    assert spec.region_px_at_finest == 896
    layout = spec.layout()
    assert layout.mag_index.tolist() == [0] + [1] * 4 + [2] * 16
    # 10x tiles are row-major 2x2 of 224 µm; 20x tiles 4x4 of 112 µm
    assert layout.offset_um[1:5].tolist() == [[0, 0], [224, 0], [0, 224], [224, 224]]
    assert layout.offset_um[5 + 7].tolist() == [3 * 112, 1 * 112]


def test_other_layouts() -> None:
    two_by_two = RegionSpec(region_um=896)
    assert two_by_two.n_tokens == 4 + 16 + 64
    only_5_20 = RegionSpec(mpps=(0.5, 2.0))
    assert only_5_20.n_tokens == 17 and only_5_20.mpps == (2.0, 0.5)


def test_invalid_specs_raise_with_advice() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        RegionSpec(region_um=500)
    with pytest.raises(ValueError, match="duplicate"):
        RegionSpec(mpps=(0.5, 0.5))


def test_magnification_parsing() -> None:
    assert parse_magnification("20x") == 0.5
    assert parse_magnification("0.25mpp") == 0.25
    assert magnification_label(2.0) == "5x"
    assert np.isclose(RegionSpec().region_size_level0(0.2282), 448 / 0.2282)
