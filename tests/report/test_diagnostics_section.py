"""The report's Diagnostics section: built from a `mixmag diagnose` folder, absent without one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mixmag.report.build import build_report, build_report_from_inputs, discover_inputs
from mixmag.report.diagnostics_section import add_diagnostics_section
from mixmag.report.figures import new_figure, save_png
from mixmag.report.html import Report


def _png(path: Path) -> Path:
    fig = new_figure(2, 1.5)
    fig.add_subplot().bar([0, 1], [0.4, 0.9])
    return save_png(fig, path)


def _pretraining_only(folder: Path) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame({"checkpoint": ["mem", "mem"], "pattern": ["random", "mask-20x"], "magnification": ["all", "20x"],
                  "n_tokens": [120, 40], "mse_model": [0.5, 0.9], "mse_zero": [1.0, 1.0],
                  "mse_region_mean": [0.8, 0.7], "ratio_zero": [0.5, 0.9],
                  "ratio_region_mean": [0.625, 1.286]}).to_csv(folder / "pretraining.csv", index=False)
    _png(folder / "pretraining.png")
    (folder / "diagnostics.json").write_text(json.dumps(
        {"skipped": {"probes": "no region labels (--region-labels)"}}), encoding="utf-8")
    return folder


def test_pretraining_only_folder_gives_table_figure_and_skipped_reasons(tmp_path: Path) -> None:
    report = Report("T")
    sec = add_diagnostics_section(report, _pretraining_only(tmp_path / "diagnostics"))
    assert sec is not None and sec.title == "Diagnostics"
    html = report.to_html()
    assert "ratio_region_mean" in html and "1.286" in html and "mse_model" not in html  # shown columns only
    assert "ratios below 1 mean the encoder learned more than the trivial answer" in html
    assert html.count("<img") == 1
    assert "no region labels" in html
    assert "Probes: is the property" not in html and "Slide ceiling" not in html


def test_every_part_when_region_labels_were_given(tmp_path: Path) -> None:
    folder = _pretraining_only(tmp_path / "diagnostics")
    pd.DataFrame({"feature_set": ["tiles-20x"], "property": ["ring"], "probe": ["linear"], "auroc": [0.91],
                  "auroc_shuffled": [0.52], "n_regions": [200], "n_pos": [40], "n_slides": [10],
                  "note": [""]}).to_csv(folder / "probes.csv", index=False)
    _png(folder / "probes.png")
    pd.DataFrame({"feature_set": ["tiles-20x"], "property": ["ring"], "probe": ["linear"], "region_auroc": [0.91],
                  "slide_auroc_max": [0.77], "slide_auroc_top3": [0.81], "n_slides": [10], "n_pos_slides": [5],
                  "note": [""]}).to_csv(folder / "ceiling.csv", index=False)
    pd.DataFrame({"target": ["label"], "method": ["mix-mem"], "property": ["ring"], "bags": ["positive"],
                  "n_bags": [5], "attention_share": [0.6], "uniform_share": [0.3], "share_ratio": [2.0],
                  "rank_auroc": [0.8], "rank_auroc_uniform": [0.5], "n_bags_auroc": [5]}).to_csv(
        folder / "attention_summary.csv", index=False)
    report = Report("T")
    add_diagnostics_section(report, folder)
    html = report.to_html()
    for expected in ("Probes: is the property in the features?", "Slide ceiling", "0.810",
                     "Attention: does the trained model look", "2.000", "chance is 0.5"):
        assert expected in html, expected
    assert html.count("<img") == 2  # pretraining bars + probe heatmap (no attention.png written here)


def test_report_builds_without_diagnostics_and_finds_them_in_a_run_folder(tmp_path: Path) -> None:
    absent = build_report(tmp_path / "a.html", diagnostics=tmp_path / "run" / "diagnostics", environment={"p": "3"})
    assert "Diagnostics" not in absent.read_text(encoding="utf-8")  # older runs have no folder
    run = tmp_path / "run"
    _pretraining_only(run / "diagnostics")
    found = discover_inputs(run)
    assert found["diagnostics"] == str(run / "diagnostics")
    html = build_report_from_inputs({**found, "environment": {"p": "3"}}).read_text(encoding="utf-8")
    assert '<section id="diagnostics"><h2>Diagnostics</h2>' in html
