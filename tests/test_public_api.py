"""The public API of ``import mixmag`` (docs/python-api.md): exactly the documented names, cheap to
import, documented, and an in-memory one-slide path that equals the file pipeline."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import mixmag as mm

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
GOLDEN_CHECKPOINT = REPO_ROOT / "tests" / "data" / "formats" / "region_checkpoint" / "v2"  # tiny.d16, 21 tokens

PUBLIC = {
    "tile_slides", "embed_slides", "pretrain_region_encoder", "encode_regions", "train_mil", "compare_runs",
    "build_report", "predict", "run_study", "list_encoders", "embed_slide", "SlideEmbedding", "RegionSpec", "MixmagError",
    "PipelineConfig", "StudyResult", "__version__",
}
FUNCTIONS = sorted(n for n in PUBLIC if n[0].islower() and not n.startswith("__"))
ENCODER_COLUMNS = ["key", "family", "embed_dim", "pooling", "input_px", "native_mpp", "default_weights", "hf_repo",
                   "license", "gated", "weights_note"]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def test_the_notebook_one_liner_works_and_shows_exactly_the_api() -> None:
    result = _python("import mixmag as mm; print(dir(mm)); print(mm.list_encoders().head())\n"
                     "print(repr(sorted(mm.__all__))); print(list(mm.list_encoders().columns))")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    shown, all_sorted, columns = eval(lines[0]), eval(lines[-2]), eval(lines[-1])  # noqa: S307 - our own output
    assert shown == all_sorted == sorted(PUBLIC)
    assert columns == ENCODER_COLUMNS
    assert "efficientnet-lite0-imagenet" in result.stdout


def test_import_is_cheap() -> None:
    """``import mixmag`` loads no numpy, torch, pandas or pydantic: every public name is lazy."""
    result = _python("import sys, mixmag\n"
                     "print(sorted(m for m in ('numpy', 'torch', 'pandas', 'pydantic', 'h5py') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_all_lists_every_lazy_name_and_each_resolves() -> None:
    assert set(mm.__all__) == PUBLIC and len(mm.__all__) == len(PUBLIC)
    assert set(mm._LAZY) | {"MixmagError", "__version__"} == PUBLIC
    for name in PUBLIC:
        assert getattr(mm, name) is not None
    assert isinstance(mm.__version__, str)
    from mixmag.errors import MixmagError
    from mixmag.geometry import RegionSpec

    assert mm.MixmagError is MixmagError and mm.RegionSpec is RegionSpec
    with pytest.raises(AttributeError, match="no attribute 'build_encoder'"):
        mm.build_encoder  # noqa: B018 - not part of the public surface any more


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_public_function_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(mm, name)) or ""
    assert "Returns:" in doc, f"mm.{name} documents no return value"
    if inspect.signature(getattr(mm, name)).parameters:
        assert "Args:" in doc, f"mm.{name} documents no arguments"


def test_list_encoders_is_the_registry() -> None:
    from mixmag.encoders import ENCODERS

    df = mm.list_encoders()
    assert list(df.columns) == ENCODER_COLUMNS
    assert list(df["key"]) == sorted(ENCODERS)
    tiny = df.set_index("key").loc["tiny.d16"]
    assert tiny["embed_dim"] == 16 and tiny["default_weights"] == "random" and not tiny["gated"]
    uni = df.set_index("key").loc["uni"]
    assert uni["gated"] and uni["hf_repo"] == "MahmoodLab/UNI" and uni["native_mpp"] == 0.5


def test_embed_slide_defaults_are_those_of_the_stage_functions() -> None:
    """Tiling and embedding settings come from the stages' own models; the rest matches by default."""
    from mixmag.region.encode import encode_regions
    from mixmag.tiling.tile import tile_slides

    ours = inspect.signature(mm.embed_slide).parameters
    assert ours["tiling"].default is None and ours["embed"].default is None  # -> TilingSettings(), EmbedSettings()
    pairs = [(tile_slides, n, n) for n in ("spec", "reader", "tissue_params", "resample")]
    pairs += [(tile_slides, "mpp_override", "mpp")]
    pairs += [(encode_regions, "batch_size", "region_batch_size"), (encode_regions, "precision", "region_precision")]
    for fn, theirs, mine in pairs:
        expected = inspect.signature(fn).parameters[theirs].default
        assert ours[mine].default == expected, f"embed_slide {mine}={ours[mine].default!r}, {fn.__name__} {expected!r}"


def test_embed_slide_checks_its_options_before_reading_the_slide(tmp_path: Path) -> None:
    missing = tmp_path / "not-there.svs"
    with pytest.raises(mm.MixmagError, match=r"unknown option 'min_tisue' \(did you mean min_tissue"):
        mm.embed_slide(missing, "tiny.d16", min_tisue=0.5)
    with pytest.raises(mm.MixmagError, match="invalid tiling setting"):
        mm.embed_slide(missing, "tiny.d16", min_tissue=2.0)
    with pytest.raises(mm.MixmagError, match="invalid embedding setting"):
        mm.embed_slide(missing, "tiny.d16", batch_size=0)
    with pytest.raises(mm.MixmagError, match="either as spec or as region_um"):
        mm.embed_slide(missing, "tiny.d16", spec=mm.RegionSpec(), region_um=224)


# ---- run_study's config handling (the study itself runs in tests/integration and the docs example) ----
def test_run_study_config_from_mapping_path_or_object(tmp_path: Path) -> None:
    from mixmag.api import _study_config

    mapping = {"out": str(tmp_path / "run"), "embed": {"encoder": "tiny.d16"}, "mil": {"epochs": 3}}
    cfg = _study_config(mapping, {"mil.epochs": 5, "evaluate.folds": 3})
    assert cfg.embed.encoder == "tiny.d16" and cfg.mil.epochs == 5 and cfg.evaluate.folds == 3
    assert mapping["mil"] == {"epochs": 3}  # the caller's mapping is left alone
    assert _study_config(cfg, ["mil.epochs=7"]).mil.epochs == 7
    assert _study_config(cfg, None) is cfg
    path = tmp_path / "study.yaml"
    path.write_text("embed:\n  encoder: tiny.d16\n", encoding="utf-8")
    assert _study_config(path, {"mil.lr": 0.01}).mil.lr == 0.01


def test_run_study_config_errors_are_mixmag_errors(tmp_path: Path) -> None:
    with pytest.raises(mm.MixmagError, match="mil.epoch"):
        mm.run_study({"out": str(tmp_path / "run"), "mil": {"epoch": 3}})
    with pytest.raises(mm.MixmagError, match="does not exist"):
        mm.run_study(tmp_path / "missing.yaml")
    with pytest.raises(mm.MixmagError, match="config must be"):
        mm.run_study(42)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


# ---- the in-memory path for one slide --------------------------------------------------------------
SLIDE = "CMU-1-Small-Region.svs"  # real H&E, 0.499 µm/px: 4 regions of 448 µm


@pytest.fixture(scope="module")
def file_pipeline(shared_wsi: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """tile_slides -> embed_slides -> encode_regions (tokens) for the sample slide, tiny.d16, fp32."""
    from mixmag.io.features import FeatureFile
    from mixmag.io.region_embeddings import RegionEmbeddingFile

    root = tmp_path_factory.mktemp("file_pipeline")
    mm.tile_slides([shared_wsi / SLIDE], root / "tiles", progress=False)
    mm.embed_slides(root / "tiles", root / "features", encoder="tiny.d16", precision="fp32", device="cpu",
                    workers=0, progress=False)
    mm.encode_regions(root / "features", GOLDEN_CHECKPOINT, root / "cls", mode="cls", progress=False)
    mm.encode_regions(root / "features", GOLDEN_CHECKPOINT, root / "tokens", mode="tokens", progress=False)
    stem = Path(SLIDE).stem
    with FeatureFile(root / "features" / f"{stem}.h5") as ff:
        features, valid = ff.read()
        coords = ff.index.coords
    cls = RegionEmbeddingFile(root / "cls" / f"{stem}.h5").read()[0]
    tokens = RegionEmbeddingFile(root / "tokens" / f"{stem}.h5").read()[0]
    return {"features": features, "valid": valid, "coords": coords, "cls": cls, "tokens": tokens}


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_embed_slide_equals_the_file_pipeline_and_writes_nothing(
        shared_wsi: Path, file_pipeline: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    slides_before = _listing(shared_wsi)

    config = mm.PipelineConfig()  # settings as a study config holds them; single fields as keywords
    emb = mm.embed_slide(shared_wsi / SLIDE, region_encoder=GOLDEN_CHECKPOINT, tiling=config.tiling,
                         embed=config.embed.updated(encoder="tiny.d16", precision="fp32"), device="cpu",
                         progress=False)

    assert _listing(cwd) == set() and _listing(tmp) == set() and _listing(shared_wsi) == slides_before
    assert isinstance(emb, mm.SlideEmbedding) and emb.slide_id == Path(SLIDE).stem
    assert repr(emb).startswith("SlideEmbedding(slide_id='CMU-1-Small-Region', n_regions=") and "cls=(" in repr(emb)
    ref = file_pipeline
    r = len(ref["coords"])
    assert r >= 2 and emb.n_regions == r and emb.mpp_level0 == pytest.approx(0.499, abs=1e-3)
    assert emb.coords.dtype == np.int64 and emb.features.dtype == np.float32
    assert emb.features.shape == (r, 21, 16) and emb.tile_valid.shape == (r, 21)
    assert emb.cls.shape == (r, 32) and emb.tokens.shape == (r, 21, 32)
    np.testing.assert_array_equal(emb.coords, ref["coords"])
    np.testing.assert_array_equal(emb.tile_valid, ref["valid"])
    # the feature file holds float16: equal up to its rounding
    np.testing.assert_allclose(emb.features, ref["features"], rtol=1e-3, atol=1e-3)
    # the region encoder saw float32 here and the float16-rounded file values there
    np.testing.assert_allclose(emb.cls, ref["cls"], rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(emb.tokens, ref["tokens"], rtol=1e-2, atol=1e-2)
    assert emb.encoder["encoder"] == "tiny.d16" and emb.encoder["precision"] == "fp32"
    assert emb.region_encoder is not None and emb.region_encoder["objective"] == "mem"


def test_embed_slide_takes_an_open_slide_and_a_built_encoder(shared_wsi: Path,
                                                             file_pipeline: dict[str, np.ndarray]) -> None:
    from mixmag.encoders import build_encoder
    from mixmag.slides import open_slide

    enc = build_encoder("tiny.d16", device="cpu", precision="fp32")
    with open_slide(shared_wsi / SLIDE) as reader:
        first = mm.embed_slide(reader, enc, batch_size=5, progress=False)  # batches cut across regions
        again = mm.embed_slide(reader, enc, progress=False)  # the slide is still open, the encoder reusable
    assert first.cls is None and first.tokens is None and first.region_encoder is None
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_allclose(first.features, file_pipeline["features"], rtol=1e-3, atol=1e-3)


def test_embed_slide_rejects_a_checkpoint_of_another_layout(shared_wsi: Path) -> None:
    from mixmag.region.checkpoints import LayoutMismatchError

    with pytest.raises(LayoutMismatchError, match="tile embedding dim 32"):
        mm.embed_slide(shared_wsi / SLIDE, "tiny.vit-d32", region_encoder=GOLDEN_CHECKPOINT, precision="fp32",
                       device="cpu", progress=False)
