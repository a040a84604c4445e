"""The HTML report is one self-contained file: it parses, embeds every image, holds the tables."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixmag.config import PipelineConfig
from mixmag.report.build import build_report, build_report_from_inputs, discover_inputs
from mixmag.report.figures import new_figure, save_png
from mixmag.report.html import Report, image_data_uri


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001, ANN201
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data"):
                self.links.append((tag, name, value or ""))
        if tag not in ("img", "meta", "br", "hr", "input", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):  # noqa: ANN001, ANN201
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()

    def handle_data(self, data):  # noqa: ANN001, ANN201
        self.text.append(data)


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.stack == []
    return parser


def _png(path: Path) -> Path:
    fig = new_figure(2, 1.5)
    fig.add_subplot().plot([0, 1], [1, 0])
    return save_png(fig, path)


def _inputs(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    comparison = pd.DataFrame({"method": ["abmil-20x", "mix-mem"], "mean": [0.61, 0.83],
                               "ci_low": [0.5, 0.74], "ci_high": [0.72, 0.91]})
    loss = pd.DataFrame({"step": np.arange(1, 51), "loss": np.linspace(1, 0.2, 50)})
    return dict(
        config=PipelineConfig(),
        cohort=pd.DataFrame({"slide_id": ["s0", "s1"], "label": [0, 1]}),
        qc_images=[_png(tmp_path / "qc.png"), (np.zeros((20, 30, 3), np.uint8), "an array")],
        comparison=comparison,
        roc={"mix-mem": (y, y + rng.normal(0, 0.5, 40))},
        loss={"mem": loss},
        heatmaps=[(_png(tmp_path / "h.png"), "heatmap of s1")],
        timings={"tile": 2.0, "embed": 10.0},
        environment={"mixmag": "0", "packages": {"torch": "x"}},
    )


def test_report_is_self_contained_and_has_the_table(tmp_path: Path) -> None:
    path = build_report(tmp_path / "report.html", title="Study <1>", **_inputs(tmp_path))
    text = path.read_text(encoding="utf-8")
    parsed = _parse(text)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    srcs = [v for tag, name, v in parsed.links if name == "src"]
    assert len(srcs) == parsed.tags.count("img") >= 7  # qc x2, forest, ROC, loss, heatmap, timings
    assert all(v.startswith("data:image/png;base64,") for v in srcs)
    assert all(v.startswith("#") for tag, name, v in parsed.links if name == "href")  # nav only
    assert "url(" not in text and "@import" not in text
    body = " ".join(parsed.text)
    assert "Study <1>" in body  # escaped in the markup, intact as text
    for expected in ("AUROC (95% CI)", "mix-mem", "0.830 (0.740–0.910)", "abmil-20x", "Environment", "Timings"):
        assert expected in body
    assert '<tr class="best">' in text


def test_report_skips_missing_parts(tmp_path: Path) -> None:
    path = build_report(tmp_path / "r.html", environment={"python": "3"})
    parsed = _parse(path.read_text(encoding="utf-8"))
    assert "img" not in parsed.tags
    assert "Method comparison" not in " ".join(parsed.text)


def test_report_from_inputs_json_and_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "evaluate" / "predictions").mkdir(parents=True)
    (run / "pretrain" / "mem").mkdir(parents=True)
    (run / "heatmaps").mkdir()
    (run / "config.resolved.yaml").write_text("out: runs/x\nmil:\n  epochs: 3\n")
    (run / "env.json").write_text(json.dumps({"python": "3.11"}))
    (run / "timings.json").write_text(json.dumps({"tile": 1.5}))
    pd.DataFrame({"method": ["a"], "mean": [0.7], "ci_low": [0.6], "ci_high": [0.8]}).to_csv(
        run / "evaluate" / "comparison.csv", index=False)
    pd.DataFrame({"y_true": [0, 1, 0, 1], "y_score": [0.1, 0.9, 0.4, 0.6], "fold": [0, 0, 1, 1]}).to_csv(
        run / "evaluate" / "predictions" / "a.csv", index=False)
    (run / "pretrain" / "mem" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    _png(run / "heatmaps" / "s0_attention.png")
    found = discover_inputs(run)
    assert {"config", "environment", "timings", "comparison", "roc", "loss", "heatmaps"} <= set(found)
    path = build_report_from_inputs(found)
    assert path == run / "report.html"
    parsed = _parse(path.read_text(encoding="utf-8"))
    assert parsed.tags.count("img") == 5  # forest, ROC, loss, heatmap, timings
    spec = tmp_path / "inputs.json"
    spec.write_text(json.dumps({"out": "r2.html", "comparison": "run/evaluate/comparison.csv",
                                "heatmaps": [{"path": "run/heatmaps/s0_attention.png", "caption": "s0"}]}))
    second = build_report_from_inputs(spec)
    assert second == tmp_path / "r2.html" and "s0" in second.read_text(encoding="utf-8")
    with pytest.raises(FileNotFoundError):
        discover_inputs(tmp_path / "nope")


def test_report_builder_escapes_and_unique_anchors() -> None:
    report = Report("T")
    report.section("A").text("x < y and `code`")
    report.section("A").table([{"k": "<b>"}])
    text = report.to_html()
    assert 'id="a"' in text and 'id="a-2"' in text
    assert "x &lt; y" in text and "<code>code</code>" in text and "&lt;b&gt;" in text
    _parse(text)


def test_image_data_uri_kinds(tmp_path: Path) -> None:
    assert image_data_uri(np.zeros((2, 2, 3), np.uint8)).startswith("data:image/png;base64,")
    jpg = tmp_path / "x.jpg"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(jpg)
    assert image_data_uri(jpg).startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="unsupported image type"):
        image_data_uri(tmp_path / "x.tiff")
