"""The report's "Endpoints" section: per-class ROC, regression and survival results of the runs.

Binary classification runs are covered by the method comparison (table, forest plot, ROC curves).
The other endpoints (docs/concepts/endpoints.md) each bring a picture and numbers of their own:
multi-class runs the one-vs-rest ROC curve of each class with the balanced accuracy, regression
runs predicted against observed values with Spearman's ρ, Pearson's r and the MAE, survival runs
the Kaplan-Meier curves of their predicted-risk groups with the log-rank test. The caller (the
study report) collects them as :class:`EndpointPanel` values: plain numbers and the run folder's
own PNGs, so this module draws nothing and reads no stage's objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixmag.report.html import ImageLike, Report, Section

#: Order and heading of the endpoint kinds, with what their table and pictures show.
KINDS: dict[str, tuple[str, str]] = {
    "multi-class": ("Multi-class classification",
                    "Macro one-vs-rest AUROC and balanced accuracy (mean recall of the most probable class; chance "
                    "1/C) of the pooled out-of-fold predictions; the pictures show the ROC curve of each class "
                    "against the rest."),
    "regression": ("Regression",
                   "Spearman's ρ (the primary metric), Pearson's r and the mean absolute error of the pooled "
                   "out-of-fold predictions; the pictures plot predicted against observed values, one colour "
                   "per test fold."),
    "survival": ("Survival",
                 "Harrell's C-index of the predicted risk (mean over folds and pooled, with its 95 % bootstrap "
                 "CI). The pictures show Kaplan-Meier curves of the patients split by predicted risk within each "
                 "test fold (median or tertiles), with the log-rank p-value of the split."),
}


@dataclass(frozen=True)
class EndpointPanel:
    """One run's endpoint result for the report.

    Attributes:
        name: The run's name in the report (``target · method``).
        kind: ``multi-class``, ``regression`` or ``survival`` (:data:`KINDS`).
        numbers: One table row: metric name -> value.
        image: The run's picture (a PNG path, array or figure).
        caption: Its caption.
    """

    name: str
    kind: str
    numbers: Mapping[str, Any] = field(default_factory=dict)
    image: ImageLike | None = None
    caption: str | None = None


def add_endpoint_section(report: Report, panels: Sequence[EndpointPanel]) -> Section | None:
    """Append the "Endpoints" section (nothing when ``panels`` is empty).

    Args:
        report: The report to extend.
        panels: One per run of a multi-class, regression or survival target.

    Returns:
        The section, or None when nothing was appended.
    """
    if not panels:
        return None
    sec = report.section("Endpoints")
    sec.text("Targets that are not binary classes, each with the numbers and pictures of its endpoint "
             "(docs/concepts/endpoints.md). Their primary metric is also in the method comparison above.")
    for kind, (heading, explanation) in KINDS.items():
        mine = [p for p in panels if p.kind == kind]
        if not mine:
            continue
        sec.heading(heading)
        sec.table([{"run": p.name, **p.numbers} for p in mine], caption=explanation)
        images = [(p.image, p.caption or p.name) for p in mine if p.image is not None]
        if images:
            sec.figures(images, min_px=380)
    return sec
