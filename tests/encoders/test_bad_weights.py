"""Bad weight and checkpoint files fail with one line naming the file and what to do.

PyTorch's own refusal of a pickled object is several paragraphs recommending
``weights_only=False`` (running the file's code); safetensors' is a bare ``SafetensorError``
without the path. Neither may reach a user.
"""

from __future__ import annotations

import argparse
import collections
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from mixmag.cli.app import build_app
from mixmag.encoders import WeightsError, build_encoder, load_state_dict_file
from mixmag.encoders.weights import sniff_weights_format
from mixmag.errors import MixmagError
from mixmag.io.h5common import FormatError

GOOD = {"a": torch.zeros(3, 4), "b": torch.ones(2)}


def _torch_file(path: Path) -> Path:
    torch.save(GOOD, path)
    return path


def _truncated_pt(tmp: Path) -> Path:
    raw = _torch_file(tmp / "src.pt").read_bytes()
    (tmp / "weights.pt").write_bytes(raw[: len(raw) // 2])
    return tmp / "weights.pt"


def _text_pt(tmp: Path) -> Path:
    (tmp / "weights.pt").write_text("these are not weights\n" * 20)
    return tmp / "weights.pt"


def _pickled_class_pt(tmp: Path) -> Path:
    # what training scripts often save: the weights plus their argparse arguments
    torch.save({"state_dict": GOOD, "args": argparse.Namespace(lr=0.1)}, tmp / "weights.pt")
    return tmp / "weights.pt"


def _pickled_module_pt(tmp: Path) -> Path:
    torch.save(torch.nn.Linear(2, 2), tmp / "weights.pt")  # the whole module, not its state dict
    return tmp / "weights.pt"


def _plain_pickle_bin(tmp: Path) -> Path:
    (tmp / "pytorch_model.bin").write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    return tmp / "pytorch_model.bin"


def _truncated_safetensors(tmp: Path) -> Path:
    save_file(GOOD, str(tmp / "src.safetensors"))
    raw = (tmp / "src.safetensors").read_bytes()
    (tmp / "model.safetensors").write_bytes(raw[:-10])
    return tmp / "model.safetensors"


def _header_only_safetensors(tmp: Path) -> Path:
    save_file(GOOD, str(tmp / "src.safetensors"))
    (tmp / "model.safetensors").write_bytes((tmp / "src.safetensors").read_bytes()[:5])
    return tmp / "model.safetensors"


def _empty(suffix: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / f"weights{suffix}").write_bytes(b"")
        return tmp / f"weights{suffix}"

    return make


def _lfs_pointer(tmp: Path) -> Path:
    (tmp / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1234567\n")
    return tmp / "model.safetensors"


def _html_page(tmp: Path) -> Path:
    (tmp / "pytorch_model.bin").write_text("<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n")
    return tmp / "pytorch_model.bin"


def _not_a_dict(tmp: Path) -> Path:
    torch.save(torch.zeros(3), tmp / "weights.pt")
    return tmp / "weights.pt"


# case -> (file factory, words the one-line message must contain)
CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "truncated-pt": (_truncated_pt, ("damaged or truncated PyTorch file", "re-download")),
    "text-named-pt": (_text_pt, ("not a PyTorch state dict or safetensors file", "re-download",
                                 "never pickled Python code")),
    "pickled-class": (_pickled_class_pt, ("pickled Python objects (argparse.Namespace)", "never pickled Python code",
                                          "model.state_dict()")),
    "pickled-module": (_pickled_module_pt, ("pickled Python objects (torch.nn.modules.linear.Linear)",)),
    "plain-pickle": (_plain_pickle_bin, ("not a PyTorch state dict or safetensors file",)),
    "truncated-safetensors": (_truncated_safetensors, ("damaged or truncated safetensors file", "re-download")),
    "cut-safetensors-header": (_header_only_safetensors, ("or truncated", "re-download")),
    "empty-pt": (_empty(".pt"), ("empty (0 bytes)",)),
    "empty-safetensors": (_empty(".safetensors"), ("empty (0 bytes)",)),
    "lfs-pointer": (_lfs_pointer, ("Git LFS pointer", "git lfs pull")),
    "html-page": (_html_page, ("HTML page", "download it again")),
    "not-a-dict": (_not_a_dict, ("holds a Tensor, not a state dict",)),
}


def _assert_one_clean_line(message: str, path: Path, words: tuple[str, ...]) -> None:
    assert "\n" not in message, message
    assert str(path) in message  # the culprit is named
    for word in words:
        assert word in message, (word, message)
    for library_text in ("weights_only", "safe_globals", "Traceback",
                         "SafetensorError", "WeightsUnpickler", "miniz"):
        assert library_text not in message, (library_text, message)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_weight_files_raise_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    path = make(tmp_path)
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    _assert_one_clean_line(str(info.value), path, words)


@pytest.mark.parametrize("case", ["truncated-pt", "pickled-class", "truncated-safetensors", "empty-pt"])
def test_build_encoder_reports_the_same_line(tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    path = make(tmp_path)
    with pytest.raises(WeightsError) as info:
        build_encoder("tiny.d16", weights=path)
    _assert_one_clean_line(str(info.value), path.resolve(), words)


def test_format_is_recognised_by_content_not_suffix(tmp_path: Path) -> None:
    save_file(GOOD, str(tmp_path / "model.bin"))  # safetensors under a torch-style name loads
    torch.testing.assert_close(load_state_dict_file(tmp_path / "model.bin")["a"], GOOD["a"])
    assert sniff_weights_format(tmp_path / "model.bin") == "safetensors"
    assert sniff_weights_format(_torch_file(tmp_path / "w.pt")) == "torch-zip"
    torch.save(GOOD, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert sniff_weights_format(tmp_path / "legacy.pt") == "torch-legacy"
    torch.testing.assert_close(load_state_dict_file(tmp_path / "legacy.pt")["b"], GOOD["b"])
    wrapped = {"model": collections.OrderedDict(GOOD), "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    assert set(load_state_dict_file(tmp_path / "wrapped.pt")) == {"a", "b"}


def test_mismatched_keys_name_the_file_and_the_keys(tmp_path: Path) -> None:
    """A valid state dict of another model: the message names the file, the encoder and the keys."""
    path = tmp_path / "other_model.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2, 2), "blocks.0.bias": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError) as info:
        build_encoder("tiny.d16", weights=path)
    message = str(info.value)
    assert "\n" not in message and str(path.resolve()) in message
    assert "do not fit encoder 'tiny.d16': no tensor name in common" in message
    assert "missing (6): features.0.bias" in message and "and 2 more" in message
    assert "unexpected (2): blocks.0.bias, blocks.0.weight" in message


def test_region_checkpoint_and_mil_model_files_fail_with_format_errors(tmp_path: Path) -> None:
    from mixmag.encoders.weights import read_safetensors_file, read_torch_file

    st = _truncated_safetensors(tmp_path)
    with pytest.raises(FormatError, match="damaged or truncated safetensors file"):
        read_safetensors_file(st, error=FormatError)
    pt = _pickled_class_pt(tmp_path)
    with pytest.raises(FormatError, match=r"pickled Python objects \(argparse\.Namespace\)"):
        read_torch_file(pt, error=FormatError)
    with pytest.raises(FormatError, match="file not found"):
        read_torch_file(tmp_path / "missing.pt", error=FormatError)


def test_damaged_region_checkpoint_weights(tmp_path: Path) -> None:
    """A checkpoint folder whose model.safetensors was cut short: one FormatError line, no SafetensorError."""
    from mixmag.geometry import RegionSpec
    from mixmag.region.checkpoints import WEIGHTS_FILE, load_region_encoder, save_region_checkpoint
    from mixmag.region.model import build_region_encoder

    encoder = build_region_encoder(tile_dim=8, spec=RegionSpec(), preset="tiny")
    folder = save_region_checkpoint(tmp_path / "ckpt", model=encoder, step=0, config={}, target_mean=None,
                                    target_std=None, spec=RegionSpec(), objective="mem")
    load_region_encoder(folder)  # intact: loads
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FormatError) as info:
        load_region_encoder(folder)
    assert "\n" not in str(info.value) and str(weights) in str(info.value)
    assert "truncated" in str(info.value)


def test_damaged_mil_model_file(tmp_path: Path) -> None:
    from mixmag.mil.artifacts import load_fold_model

    path = tmp_path / "model.pt"
    path.write_bytes(_torch_file(tmp_path / "src.pt").read_bytes()[:200])
    with pytest.raises(FormatError, match="damaged or truncated PyTorch file") as info:
        load_fold_model(path)
    assert str(path) in str(info.value)
    torch.save([1, 2, 3], path)  # loads, but is not a mixmag model
    with pytest.raises(FormatError, match="not a mixmag mil_model v1/v2 file"):
        load_fold_model(path)
    assert issubclass(FormatError, MixmagError)


@pytest.mark.parametrize("case", ["pickled-class", "truncated-safetensors"])
def test_cli_embed_with_bad_weights_prints_one_line(tmp_path: Path, case: str) -> None:
    make, words = CASES[case]
    bad = make(tmp_path)
    result = CliRunner().invoke(build_app(), [  # WARNING: without the INFO line "loading ... weights from"
        "--log-level", "WARNING", "embed", str(tmp_path), "--out", str(tmp_path / "features"), "--encoder", "tiny.d16",
        "--weights", str(bad), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2, result.output  # a user error, not a crash (70) or a failed batch (1)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output
    assert str(bad.resolve()) in lines[0] and all(w in lines[0] for w in words)
