"""Which endpoint each label column is, and its values parsed and checked (docs/concepts/endpoints.md).

A *target* is what one set of runs predicts: a class column (classification), a numeric column
(regression), or a pair of columns, follow-up time and event (survival). Targets are declared in
``mil.target_types`` (``{grade: multiclass, ki67: regression, os: survival}``) or inferred from the
labels table, one logged line per inferred target:

- columns ``<name>_time`` and ``<name>_event`` (or the pair named in ``mil.survival_columns``) form
  the survival target ``<name>``;
- a column whose values are all numbers, with more than :data:`REGRESSION_MIN_DISTINCT` distinct
  values, is a regression target;
- any other column is a classification target (binary or multi-class).

Values that do not fit the endpoint (text in a regression column, an event that is not 0/1, a
negative time, a survival target without its event column) are one :class:`LabelTypeError` line
that names the column and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixmag.errors import MixmagValueError
from mixmag.mil.settings import TARGET_TYPES

logger = logging.getLogger(__name__)

ID_COLUMNS = ("patient_id", "slide_id")
#: A numeric column with more distinct values than this is inferred to be a regression target.
REGRESSION_MIN_DISTINCT = 10
#: Suffixes of the two columns of a survival target ``<name>``.
TIME_SUFFIX, EVENT_SUFFIX = "_time", "_event"
#: Declared type -> endpoint (``binary``/``multiclass`` are classification with a class-count check).
ENDPOINT_OF = {"classification": "classification", "binary": "classification", "multiclass": "classification",
               "regression": "regression", "survival": "survival"}
_SHOW = 3  # offending values an error names


class LabelTypeError(MixmagValueError):
    """A label column whose values do not fit its endpoint (one line: the column and the fix)."""


@dataclass(frozen=True)
class TargetSpec:
    """One target: its name, endpoint and the label column(s) it reads.

    Attributes:
        name: Target name (the ``<out>/<target>/`` folder, ``target`` in every output).
        endpoint: ``classification``, ``regression`` or ``survival``.
        columns: ``(column,)``, or ``(time column, event column)`` for survival.
        declared: The type as declared in ``mil.target_types`` (None: inferred).
    """

    name: str
    endpoint: str
    columns: tuple[str, ...]
    declared: str | None = None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _filled(series: pd.Series) -> pd.Series:
    """The non-empty cells of a label column, stripped."""
    s = series.dropna().astype(str).str.strip()
    return s[s != ""]


def _survival_columns(name: str, explicit: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    cols = explicit.get(name)
    return (str(cols[0]), str(cols[1])) if cols else (name + TIME_SUFFIX, name + EVENT_SUFFIX)


def _infer_single(df: pd.DataFrame, column: str, log: int) -> str:
    values = _filled(df[column])
    numeric = len(values) > 0 and all(_is_number(v) for v in values)
    distinct = values.nunique()
    if numeric and distinct > REGRESSION_MIN_DISTINCT:
        logger.log(log, "target %r: %d distinct numeric values -> regression (inferred; declare mil.target_types: "
                   "{%s: classification} to treat them as classes)", column, distinct, column)
        return "regression"
    # a few numbers could be a coarse score: said at the level asked for; text or two values are classes
    logger.log(log if numeric and distinct > 2 else logging.DEBUG, "target %r: %d distinct values -> classification "
               "(inferred; declare mil.target_types to change it)", column, distinct)
    return "classification"


def resolve_targets(df: pd.DataFrame, targets: Sequence[str] | None = None, *,
                    target_types: Mapping[str, str] | None = None,
                    survival_columns: Mapping[str, Sequence[str]] | None = None,
                    log: int = logging.INFO) -> list[TargetSpec]:
    """The targets to train, each with its endpoint and columns (declared, else inferred and logged).

    Args:
        df: Labels table (:func:`~mixmag.mil.labels.read_labels`).
        targets: Target names (``mil.targets``); None/empty: every label column, with each
            survival column pair as one target.
        target_types: ``{target: type}`` (``mil.target_types``; types of :data:`TARGET_TYPES`).
        survival_columns: ``{target: [time column, event column]}`` (``mil.survival_columns``).
        log: Level of the lines that say how a target was inferred (a check that runs before
            training passes ``logging.DEBUG``: training says it again).

    Raises:
        MixmagValueError: An unknown target or type.
        LabelTypeError: A survival target without its time or event column.
    """
    declared = dict(target_types or {})
    explicit = {k: list(v) for k, v in (survival_columns or {}).items()}
    unknown_types = {t: v for t, v in declared.items() if v not in ENDPOINT_OF}
    if unknown_types:
        raise MixmagValueError(f"unknown target type(s) {unknown_types}; use one of {', '.join(TARGET_TYPES)}")
    columns = [c for c in df.columns if c not in ID_COLUMNS]
    for name in explicit:
        declared.setdefault(name, "survival")
    # survival targets: declared ones, then <name>_time/<name>_event pairs not claimed otherwise
    survival: dict[str, tuple[str, str]] = {n: _survival_columns(n, explicit) for n, t in declared.items()
                                            if ENDPOINT_OF[t] == "survival"}
    for col in columns:
        if col.endswith(TIME_SUFFIX):
            name = col[: -len(TIME_SUFFIX)]
            if name and name + EVENT_SUFFIX in columns and name not in survival and name not in declared \
                    and col not in declared and name + EVENT_SUFFIX not in declared:
                survival[name] = (col, name + EVENT_SUFFIX)
    paired = {c for pair in survival.values() for c in pair}

    def spec(name: str) -> TargetSpec:
        kind: str | None = declared.get(name)
        if name in survival:
            time_col, event_col = survival[name]
            missing = [c for c in (time_col, event_col) if c not in df.columns]
            if missing:
                raise LabelTypeError(
                    f"survival target {name!r} needs a time column {time_col!r} and an event column {event_col!r} "
                    f"(1 = event, 0 = censored); the labels table has no {' or '.join(map(repr, missing))}: add it, or "
                    f"name the columns with mil.survival_columns: {{{name}: [<time column>, <event column>]}}")
            if kind is None:
                logger.log(log, "target %r: columns %r and %r -> survival (inferred from the column names; declare "
                            "mil.target_types: {%s: survival} to make it explicit)", name, time_col, event_col, name)
            return TargetSpec(name, "survival", (time_col, event_col), kind)
        if name not in df.columns:
            hint = (f"; for a survival target add columns {name + TIME_SUFFIX!r} and {name + EVENT_SUFFIX!r}"
                    if kind is None else "")
            raise MixmagValueError(f"label column(s) [{name!r}] not in the labels table; available: {columns}{hint}")
        endpoint = ENDPOINT_OF[kind] if kind is not None else _infer_single(df, name, log)
        return TargetSpec(name, endpoint, (name,), kind)

    if targets:
        unknown = [t for t in targets if t not in columns and t not in survival]
        if unknown:
            pairs = f" and survival targets {sorted(survival)}" if survival else ""
            raise MixmagValueError(f"label column(s) {unknown} not in the labels table; available: {columns}{pairs}")
        return [spec(t) for t in targets]
    if not columns:
        raise MixmagValueError("the labels table has no label column besides patient_id and slide_id; add one "
                               "column per target (e.g. label) with a value per slide")
    names: list[str] = []
    for col in columns:  # table order; a survival target where its time column is
        owner = next((n for n, pair in survival.items() if col == pair[0]), None)
        if owner is not None:
            names.append(owner)
        elif col not in paired:
            names.append(col)
    names += [n for n in survival if n not in names]  # a pair whose time column is missing: error in spec()
    return [spec(n) for n in names]


def _bad_cells(values: pd.Series, ok: pd.Series) -> str:
    """``'x' (line 5), 'y' (line 9) ... (n rows)`` for the cells where ``ok`` is False."""
    bad = values[~ok]
    shown = ", ".join(f"{v!r} (line {int(i) + 2})" for i, v in list(bad.items())[:_SHOW])
    return shown + (f" ... ({len(bad)} rows)" if len(bad) > _SHOW else "")


def parse_regression(values: pd.Series, target: TargetSpec) -> pd.Series:
    """Float values of a regression column (filled cells only; index kept).

    Raises:
        LabelTypeError: Text or non-finite numbers in the column.
    """
    numbers = pd.to_numeric(values, errors="coerce")
    ok = numbers.notna() & np.isfinite(numbers.astype(np.float64))
    if not ok.all():
        how = "declared regression" if target.declared else "a regression target"
        raise LabelTypeError(
            f"target {target.name!r} is {how} but column {target.columns[0]!r} holds values that are not finite "
            f"numbers: {_bad_cells(values, ok)}; fix those cells (or leave them empty to exclude the slides), or "
            f"declare the column classification (mil.target_types: {{{target.name}: classification}})")
    return numbers.astype(np.float64)


def parse_survival(time: pd.Series, event: pd.Series, target: TargetSpec) -> pd.DataFrame:
    """``time`` (float, >= 0) and ``event`` (0/1 int) of a survival target (rows with both filled).

    Raises:
        LabelTypeError: Non-numeric or negative times, events other than 0/1, or a row with a time
            but no event (or the reverse).
    """
    time_col, event_col = target.columns
    t_filled = time.notna() & (time.astype(str).str.strip() != "")
    e_filled = event.notna() & (event.astype(str).str.strip() != "")
    half = t_filled != e_filled
    if half.any():
        row = int(half.to_numpy().nonzero()[0][0])
        raise LabelTypeError(
            f"survival target {target.name!r}: {int(half.sum())} rows have only one of {time_col!r} and {event_col!r} "
            f"(first at line {int(half.index[row]) + 2}); fill in both, or leave both empty to exclude the slide")
    t_raw, e_raw = time[t_filled].astype(str).str.strip(), event[e_filled].astype(str).str.strip()
    t_num = pd.to_numeric(t_raw, errors="coerce")
    ok = t_num.notna() & np.isfinite(t_num.astype(np.float64))
    if not ok.all():
        raise LabelTypeError(f"survival target {target.name!r}: column {time_col!r} holds values that are not "
                             f"numbers: {_bad_cells(t_raw, ok)}; give the follow-up time as a number (e.g. months)")
    ok = t_num >= 0
    if not ok.all():
        raise LabelTypeError(f"survival target {target.name!r}: column {time_col!r} has negative times: "
                             f"{_bad_cells(t_raw, ok)}; times are follow-up durations >= 0 from a common start "
                             "(e.g. diagnosis)")
    e_num = pd.to_numeric(e_raw, errors="coerce")
    ok = e_num.isin([0, 1])
    if not ok.all():
        raise LabelTypeError(f"survival target {target.name!r}: column {event_col!r} must hold 0 (censored) or 1 "
                             f"(event observed), found {_bad_cells(e_raw, ok)}; recode it (e.g. dead = 1, alive = 0)")
    return pd.DataFrame({"time": t_num.astype(np.float64), "event": e_num.astype(np.int64)})


def check_values(df: pd.DataFrame, target: TargetSpec) -> None:
    """Parse a target's filled cells as its endpoint wants them (before any slow work).

    Raises:
        LabelTypeError: The first problem, naming the column and the fix.
    """
    if target.endpoint == "regression":
        values = _filled(df[target.columns[0]])
        parse_regression(values, target)
    elif target.endpoint == "survival":
        parse_survival(df[target.columns[0]], df[target.columns[1]], target)
