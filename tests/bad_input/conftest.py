"""Good inputs made once, and generators that spoil copies of them, for the bad-input corpus.

The good inputs come out of the real CLI, on synthetic data small enough for a 2-core machine
(about 10 s for the session): eight 1800x1000-px slides at 0.5 µm/px (two 448-µm regions each),
tiled, embedded with ``tiny.d16`` (random weights), a labels table (four per class) and one
AB-MIL run trained on them, plus a tiny region-encoder checkpoint that fits those features.

Each generator writes one kind of bad input (a damaged slide, labels table, config, feature file,
checkpoint or weights file) under a folder it is given and returns its path; ``test_corpus.py``
turns them into CLI calls. The generators reach the tests through the ``bad`` fixture, because
the suite imports test modules with ``--import-mode=importlib`` (a test cannot import a conftest).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from mixmag.cli.app import build_app
from mixmag.synth.tiff import draw_tissue_layout, write_pyramidal_tiff

SIZE = (1800, 1000)  # level-0 px at 0.5 µm/px: two 448-µm (896-px) regions over the tissue
MPP = 0.5
N_SLIDES = 8
ENCODER = "tiny.d16"
TILE_DIM = 16


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models on two shared cores: more threads only contend


# ------------------------------------------------------------------------------------ running
@contextmanager
def _as_in_a_mixmag_process() -> Iterator[None]:
    """The root logger without pytest's capture handlers, as in a ``mixmag`` process.

    A library that logs without a handler of its own (tifffile on a damaged TIFF) then reaches
    Python's last-resort handler, which prints on the stderr the runner captures: exactly what a
    user would see. Under pytest those records would silently go to the capture handlers instead.
    """
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = saved


def invoke(args: list[object], *, log_level: str = "WARNING") -> Result:
    """``mixmag --log-level LEVEL ARGS...`` in-process (typer's CliRunner), stdout and stderr apart."""
    with _as_in_a_mixmag_process():
        return CliRunner().invoke(build_app(), ["--log-level", log_level, *map(str, args)])


# ------------------------------------------------------------------------------------ slides
def slide(folder: Path, name: str, *, seed: int = 0, mpp: float | None = MPP) -> Path:
    """A good pyramidal JPEG TIFF (3 levels) with resolution tags and one blob of tissue."""
    w, h = SIZE
    rgb, _ = draw_tissue_layout(SIZE, [(0.5 * w, 0.5 * h, 0.35 * w, 0.4 * h)], seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    return write_pyramidal_tiff(folder / name, rgb, mpp=mpp, n_levels=3, tile_px=256, compression="jpeg")


def _rgb() -> np.ndarray:
    w, h = SIZE
    rgb, _ = draw_tissue_layout(SIZE, [(0.5 * w, 0.5 * h, 0.35 * w, 0.4 * h)], seed=0)
    return rgb


def _plain_tiff(path: Path, pixels: np.ndarray, *, mpp: float | None = MPP, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    resolution = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, pixels, tile=(256, 256), **resolution, **kwargs)
    return path


def truncated_slide(folder: Path, good: Path) -> Path:
    """The first third of a good slide: an interrupted copy (the header is fine, the tiles are cut)."""
    raw = good.read_bytes()
    return _write_bytes(folder / "truncated.tiff", raw[: len(raw) // 3])


def corrupt_slide(folder: Path) -> Path:
    """TIFF magic bytes, then nonsense: no reader can open it."""
    return _write_bytes(folder / "corrupt.tiff", b"II*\x00" + b"\x17" * 4096)


def zero_byte_slide(folder: Path) -> Path:
    return _write_bytes(folder / "empty.svs", b"")


def text_as_slide(folder: Path) -> Path:
    """A text file with a slide's extension: not an image at all."""
    return _write_bytes(folder / "notes.svs", b"patient notes, not a slide\n" * 50)


def rgb16_slide(folder: Path) -> Path:
    """Full-range 16-bit RGB: the readers would keep only the high byte."""
    return _plain_tiff(folder / "rgb16.tiff", _rgb().astype(np.uint16) * 257, photometric="rgb")


def multiplex_slide(folder: Path) -> Path:
    """Four 8-bit fluorescence channels as pages (axes QYX): not bright-field RGB."""
    return _plain_tiff(folder / "multiplex.tiff", np.stack([_rgb()[..., 0]] * 4), photometric="minisblack")


def no_mpp_slide(folder: Path) -> Path:
    """A good RGB TIFF without resolution tags or objective: the µm/px is unknown."""
    return _plain_tiff(folder / "nompp.tiff", _rgb(), mpp=None, photometric="rgb")


def unknown_extension(folder: Path, good: Path) -> Path:
    """A good slide under an extension no reader claims."""
    return _write_bytes(folder / "scan.xyz", good.read_bytes())


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ feature files
def _replace(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _first_valid_token(f: h5py.File, value: float) -> None:
    r, t = np.argwhere(f["tile_valid"][()])[0]  # a valid token: invalid (background) ones are never read
    f["tile_features"][r, t, 0] = value


def _edit(change: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with h5py.File(path, "a") as f:
            change(f)
    return apply


#: kind -> damage done in place to a copy of a good feature file
FEATURE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "incomplete-flag": _edit(lambda f: f.attrs.__setitem__("complete", False)),
    "rows-vs-coords": _edit(lambda f: _replace(f, "coords", f["coords"][:-1])),
    "nan-value": _edit(lambda f: _first_valid_token(f, np.nan)),
    "inf-value": _edit(lambda f: _first_valid_token(f, np.inf)),
    "wrong-dim": _edit(lambda f: _replace(f, "tile_features", f["tile_features"][:, :, : TILE_DIM // 2])),
    "no-encoder-stamp": _edit(lambda f: f.attrs.__setitem__("encoder", "")),
    "not-hdf5": lambda p: p.write_bytes(b"this is not an HDF5 file\n" * 10),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:600]),
}


def other_encoder_stamp(path: Path) -> None:
    """Stamp a feature file as made by another tile encoder (same shape: only the provenance differs)."""
    with h5py.File(path, "a") as f:
        f.attrs["encoder"] = "uni"


def damaged_features(folder: Path, good: Path, kind: str, *, victim: str) -> Path:
    """A copy of the good feature folder in which ``victim``'s file has damage ``kind``."""
    copy = folder / f"features-{kind}"
    shutil.copytree(good, copy, ignore=shutil.ignore_patterns("*.lock", "manifest.csv", "embed.json"))
    damage = other_encoder_stamp if kind == "other-encoder-stamp" else FEATURE_DAMAGE[kind]
    damage(copy / f"{victim}.h5")
    return copy


# -------------------------------------------------------------------------------- checkpoints
def region_checkpoint(folder: Path, *, tile_dim: int = TILE_DIM) -> Path:
    """A tiny-preset region-encoder checkpoint (seeded initialisation) for ``tile_dim`` features."""
    from mixmag.geometry import RegionSpec
    from mixmag.region.checkpoints import save_region_checkpoint
    from mixmag.region.model import build_region_encoder

    torch.manual_seed(0)
    encoder = build_region_encoder(tile_dim=tile_dim, spec=RegionSpec(), preset="tiny")
    return save_region_checkpoint(folder, model=encoder, step=0, config={"test": True}, target_mean=None,
                                  target_std=None, spec=RegionSpec(), objective="mem")


def _copy_checkpoint(folder: Path, good: Path, name: str) -> Path:
    copy = folder / name
    shutil.copytree(good, copy)
    return copy


def truncated_checkpoint(folder: Path, good: Path) -> Path:
    copy = _copy_checkpoint(folder, good, "ckpt-truncated")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return copy


def text_as_checkpoint_weights(folder: Path, good: Path) -> Path:
    copy = _copy_checkpoint(folder, good, "ckpt-text")
    (copy / "model.safetensors").write_text("not weights\n", encoding="utf-8")
    return copy


def checkpoint_without_config(folder: Path, good: Path) -> Path:
    copy = _copy_checkpoint(folder, good, "ckpt-no-config")
    (copy / "config.json").unlink()
    return copy


def checkpoint_bad_json(folder: Path, good: Path) -> Path:
    copy = _copy_checkpoint(folder, good, "ckpt-bad-json")
    (copy / "config.json").write_text('{"artifact": "region_checkpoint", ', encoding="utf-8")
    return copy


def file_as_checkpoint(folder: Path) -> Path:
    """A single .pt file where a checkpoint folder belongs (the wrong file type)."""
    return _write_bytes(folder / "mem.pt", b"PK\x03\x04 not a checkpoint")


def checkpoint_of_other_dim(folder: Path) -> Path:
    """A valid checkpoint for 8-dim tile features: the wrong architecture for 16-dim features."""
    return region_checkpoint(folder / "ckpt-dim8", tile_dim=TILE_DIM // 2)


def checkpoint_mixed_weights(folder: Path, good: Path) -> Path:
    """The config of one checkpoint with the weights of another architecture (a half-copied folder)."""
    other = checkpoint_of_other_dim(folder / "other")
    copy = _copy_checkpoint(folder, good, "ckpt-mixed")
    shutil.copy(other / "model.safetensors", copy / "model.safetensors")
    return copy


def damaged_mil_run(folder: Path, good: Path, kind: str) -> Path:
    """A copy of a trained MIL run folder whose every ``model.pt`` has damage ``kind``."""
    copy = folder / f"mil-{kind}"
    shutil.copytree(good, copy)
    for model in copy.rglob("model.pt"):
        if kind == "truncated":
            model.write_bytes(model.read_bytes()[:300])
        elif kind == "foreign":  # loads, but is not a mixmag model
            torch.save({"weights": torch.zeros(3)}, model)
        elif kind == "wrong-architecture":  # the header no longer matches the weights
            payload = torch.load(model, weights_only=True)
            payload["head"]["hidden_dim"] = 8
            torch.save(payload, model)
        else:
            raise ValueError(kind)
    return copy


# ------------------------------------------------------------------------------------ weights
_STATE = {"a": torch.zeros(3, 4), "b": torch.ones(2)}


def weights_file(folder: Path, kind: str) -> Path:
    """A bad tile-encoder weights file (or folder) of ``kind``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "empty-pt":
        return _write_bytes(folder / "weights.pt", b"")
    if kind in ("truncated-pt", "truncated-safetensors"):
        src = folder / ("src.pt" if kind == "truncated-pt" else "src.safetensors")
        if kind == "truncated-pt":
            torch.save(_STATE, src)
            return _write_bytes(folder / "weights.pt", src.read_bytes()[: src.stat().st_size // 2])
        save_file(_STATE, str(src))
        return _write_bytes(folder / "model.safetensors", src.read_bytes()[:-10])
    if kind == "pickled-objects":  # a training script's checkpoint: tensors plus its argparse arguments
        torch.save({"state_dict": _STATE, "args": argparse.Namespace(lr=0.1)}, folder / "weights.pt")
        return folder / "weights.pt"
    if kind == "lfs-pointer":
        return _write_bytes(folder / "model.safetensors",
                            b"version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1234567\n")
    if kind == "html-page":
        return _write_bytes(folder / "pytorch_model.bin", b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n")
    if kind == "other-model":  # valid safetensors of another network
        save_file({"blocks.0.weight": torch.zeros(2, 2), "blocks.0.bias": torch.zeros(2)},
                  str(folder / "other.safetensors"))
        return folder / "other.safetensors"
    if kind == "empty-folder":
        (folder / "weights").mkdir()
        return folder / "weights"
    raise ValueError(kind)


# ------------------------------------------------------------------------------ good inputs
@dataclass(frozen=True)
class Study:
    """The good inputs, all made through the CLI (paths under one session folder)."""

    slides: Path  # s0.tiff ... s7.tiff
    tiles: Path  # `mixmag tile` output: regions/<slide>.h5, regions/manifest.csv
    features: Path  # `mixmag embed` output: <slide>.h5 (tiny.d16, 16-dim)
    labels: Path  # patient_id,slide_id,label: p<i>,s<i>,i % 2
    trained: Path  # `mixmag train --out`: label/abmil-20x/...
    checkpoint: Path  # region-encoder checkpoint folder for 16-dim features


#: `mixmag train` options of the fastest run that still exercises every step
FAST_TRAIN = ["--methods", "abmil-20x", "--folds", "2", "--epochs", "1", "--bootstrap", "0", "--device", "cpu",
              "--no-progress", "--set", "mil.hidden_dim=16", "--set", "mil.attention_dim=8"]


def _ok(result: Result, what: str) -> None:
    assert result.exit_code == 0, f"making the good {what} failed:\n{result.output}"


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """Slides -> tiles -> features -> a trained AB-MIL run, once per session (about 10 s)."""
    root = tmp_path_factory.mktemp("good")
    slides = root / "slides"
    for i in range(N_SLIDES):
        slide(slides, f"s{i}.tiff", seed=i)
    labels = root / "labels.csv"
    labels.write_text("patient_id,slide_id,label\n" + "".join(f"p{i},s{i},{i % 2}\n" for i in range(N_SLIDES)),
                      encoding="utf-8")
    _ok(invoke(["tile", slides, "--out", root / "tiles", "--no-progress"], log_level="ERROR"), "tiles")
    _ok(invoke(["embed", root / "tiles", "--out", root / "features", "--encoder", ENCODER, "--random-weights",
                "--workers", "0", "--device", "cpu", "--no-progress"], log_level="ERROR"), "features")
    _ok(invoke(["train", root / "features", "--labels", labels, "--out", root / "mil", *FAST_TRAIN],
               log_level="ERROR"), "MIL run")
    return Study(slides=slides, tiles=root / "tiles", features=root / "features", labels=labels,
                 trained=root / "mil", checkpoint=region_checkpoint(root / "checkpoint"))


@pytest.fixture
def bad() -> SimpleNamespace:
    """The generators above, for test_corpus.py."""
    return SimpleNamespace(
        invoke=invoke, slide=slide, truncated_slide=truncated_slide, corrupt_slide=corrupt_slide,
        zero_byte_slide=zero_byte_slide, text_as_slide=text_as_slide, rgb16_slide=rgb16_slide,
        multiplex_slide=multiplex_slide, no_mpp_slide=no_mpp_slide, unknown_extension=unknown_extension,
        damaged_features=damaged_features, feature_damage=sorted(FEATURE_DAMAGE),
        region_checkpoint=region_checkpoint, truncated_checkpoint=truncated_checkpoint,
        text_as_checkpoint_weights=text_as_checkpoint_weights, checkpoint_without_config=checkpoint_without_config,
        checkpoint_bad_json=checkpoint_bad_json, file_as_checkpoint=file_as_checkpoint,
        checkpoint_of_other_dim=checkpoint_of_other_dim, checkpoint_mixed_weights=checkpoint_mixed_weights,
        damaged_mil_run=damaged_mil_run, weights_file=weights_file, fast_train=FAST_TRAIN, encoder=ENCODER,
    )
