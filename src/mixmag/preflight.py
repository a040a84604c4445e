"""Check a study config before any work starts: every problem at once, one line each.

Two kinds of check, in two places:

* the *values* (types, ranges, registry keys, magnifications, the form of a hub id) are checked by
  the settings models themselves, so a config file, ``--set`` and a command's options all get them
  (:mod:`mixmag.config_errors` words them);
* the *data* is checked here, by :func:`preflight`, on a validated config: the files and folders a
  stage reads exist (slides, labels, mpp table, splits, region labels, checkpoints, local weights),
  slide folders hold slides, the labels table parses and names slides among the inputs, and the
  region geometry tiles. Nothing is written and no model is loaded.

:func:`check_config` does both and reports every problem together (a rejected value is left out and
the rest is still checked), with ``file:line`` for keys from a YAML file. ``mixmag config show``,
``mixmag run`` and the stage commands call it; :meth:`mixmag.pipeline.study.Study.run` (hence
``mm.run_study`` and ``mixmag demo``) calls :func:`preflight` before its first stage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from mixmag.config import PipelineConfig
from mixmag.config_errors import (
    ConfigError,
    format_config_error,
    merge_data_checked,
    message_order,
    validate_valid_part,
    where_prefix,
)
from mixmag.embed.settings import weights_kind
from mixmag.errors import MixmagError
from mixmag.region.settings import OBJECTIVE_KEYS

#: Stages whose inputs :func:`preflight` checks, in pipeline order.
STAGES = ("tile", "embed", "pretrain", "train", "external", "diagnose")
#: Stages that also read a text file listing feature files in place of a feature folder.
FEATURE_LIST_STAGES = ("pretrain",)
#: ``stages=STUDY``: the stages ``mixmag run`` runs for the config (:func:`study_stages`).
STUDY = "study"
#: Device strings the stages accept (``torch.device`` would reject others only when the stage starts).
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")
_SHOW = 5  # ids listed in a message

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config's data.

    Attributes:
        key: Dotted config key (``"mil.labels"``, ``"slides.inputs[1]"``) or, for a command's
            argument, its name in capitals (``"FEATURES_DIR"``).
        message: What is wrong and what to do.
        level: ``"error"`` stops the run; ``"warning"`` is reported and the run goes on.
        value: The offending value (a path), shown after the key.
    """

    key: str
    message: str
    level: Level = "error"
    value: Any = None

    def line(self, where: str = "") -> str:
        """``study.yaml:7: 'mil.labels' = /data/labels.csv: file not found ...``."""
        shown = f" = {self.value}" if self.value is not None else ""
        return f"{where}'{self.key}'{shown}: {self.message}"


class PreflightError(ConfigError):
    """A config with problems: ``str()`` is the error lines, one per problem; the warnings travel along.

    Args:
        errors: One line per error.
        warnings: One line per warning.
    """

    def __init__(self, errors: Sequence[str], warnings: Sequence[str] = ()) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)
        self.warnings = list(warnings)


def study_stages(config: PipelineConfig) -> tuple[str, ...]:
    """The stages ``mixmag run`` runs for ``config`` (training only with labels)."""
    stages = ["tile", "embed", "pretrain"]
    if config.mil.labels is not None:
        stages.append("train")
        if config.external.inputs:
            stages.append("external")
    if config.evaluate.diagnostics:
        stages.append("diagnose")
    return tuple(stages)


def _few(items: Sequence[object]) -> str:
    shown = ", ".join(repr(str(i)) for i in items[:_SHOW])
    return shown + (" ..." if len(items) > _SHOW else "")


def _exists(key: str, path: Path | str | None, what: str, *, folder_ok: bool = True) -> list[Problem]:
    """A problem when ``path`` (set) does not exist, or is a folder where a file is needed."""
    if path is None:
        return []
    p = Path(path).expanduser()
    if not p.exists():
        return [Problem(key, f"file not found ({what})", value=path)]
    if p.is_dir() and not folder_ok:
        return [Problem(key, f"is a folder; give the file ({what})", value=path)]
    return []


def _device(key: str, device: str) -> list[Problem]:
    if _DEVICE.match(device):
        return []
    return [Problem(key, "unknown device; use auto, cpu, cuda, cuda:N (a GPU index) or mps", value=device)]


# ---------------------------------------------------------------------------------------- slides
def _slide_inputs(key: str, items: Sequence[Path], out: Path, *, features_ok: bool = False
                  ) -> tuple[list[Problem], list[str] | None]:
    """Check every input of ``key``; return the problems and the slide ids (None when any is unusable).

    A folder must hold at least one slide file (or, with ``features_ok``, feature files); a CSV
    list must parse and every slide it lists must exist. Folders are walked once.
    """
    from mixmag.slides.opener import known_extensions
    from mixmag.tiling.inputs import collect_slides

    problems: list[Problem] = []
    usable: list[Path] = []
    for i, item in enumerate(items):
        p = Path(item).expanduser()
        if not p.exists():
            problems.append(Problem(f"{key}[{i}]", "file or folder does not exist; check the path", value=item))
            continue
        if p.suffix.lower() == ".csv" and p.is_file():
            try:
                listed = collect_slides([p], exclude=out)
            except MixmagError as exc:
                problems.append(Problem(f"{key}[{i}]", str(exc).removeprefix(f"{p.resolve()}: "), value=item))
                continue
            missing = [str(j.path) for j in listed if not j.path.exists()]
            if not listed:
                problems.append(Problem(f"{key}[{i}]", "the slide list names no slide", value=item))
                continue
            if missing:
                problems.append(Problem(f"{key}[{i}]", f"{len(missing)} of {len(listed)} slides it lists do not "
                                                       f"exist: {_few(missing)}; fix their paths or remove those rows",
                                        value=item))
                continue
        usable.append(p)
    try:
        jobs = collect_slides(usable, exclude=out) if usable else []
    except MixmagError as exc:  # two listings disagree, say; the stage would stop the same way
        return [*problems, Problem(key, str(exc))], None
    feature_ids: list[str] = []
    for i, item in enumerate(items):
        p = Path(item).expanduser()
        if not p.is_dir() or any(p.resolve() in j.path.parents for j in jobs):
            continue
        h5 = sorted(f.stem for f in p.glob("*.h5") if not f.name.startswith("."))
        if features_ok and h5:  # a folder of feature files (external.inputs)
            feature_ids += h5
            continue
        problems.append(Problem(f"{key}[{i}]", "the folder holds no slide file (looked for "
                                               f"{', '.join(known_extensions())} in it and its subfolders); give "
                                               "the folder of the slides", value=item))
    if problems:
        return sorted(problems, key=lambda q: _index(q.key)), None
    return [], [j.slide_id for j in jobs] + feature_ids


def _index(key: str) -> int:
    """The list index of a key such as ``slides.inputs[3]`` (-1 without one), to keep inputs in order."""
    return int(key.rsplit("[", 1)[1].rstrip("]")) if key.endswith("]") else -1


def _geometry(config: PipelineConfig) -> list[Problem]:
    """The region must be a whole number of tiles at every magnification (blame what was set)."""
    t = config.tiling
    try:
        t.region_spec()
    except MixmagError as exc:
        chosen = next((k for k in ("magnifications", "region_um", "tile_px") if k in t.model_fields_set),
                      "magnifications")
        return [Problem(f"tiling.{chosen}", str(exc), value=_flow(getattr(t, chosen)))]
    return []


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# ---------------------------------------------------------------------------------------- labels
def _labels(key: str, path: Path, *, targets: Sequence[str], targets_key: str | None,
            ids: Collection[str] | None, ids_from: str, partial: Level, partial_hint: str,
            target_types: Mapping[str, str] | None = None,
            survival_columns: Mapping[str, Sequence[str]] | None = None) -> list[Problem]:
    """The labels table exists, parses, has the target columns (whose values fit their endpoint:
    docs/concepts/endpoints.md) and names slides among ``ids``."""
    from mixmag.mil.labels import ID_COLUMNS, read_labels
    from mixmag.mil.targets import LabelTypeError, check_values, resolve_targets

    p = Path(path).expanduser()
    found = _exists(key, path, "a CSV/TSV with patient_id, slide_id and label columns", folder_ok=False)
    if found:
        return found
    try:
        empty = not p.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        return [Problem(key, f"not a text file ({exc.reason} at byte {exc.start}); save the labels table as CSV or "
                             "TSV (UTF-8)", value=path)]
    except OSError as exc:
        return [Problem(key, f"cannot be read ({exc})", value=path)]
    if empty:
        return [Problem(key, "empty labels file: it needs a header patient_id,slide_id,<label> and one row "
                             "per slide", value=path)]
    try:
        df = read_labels(p)
    except MixmagError as exc:
        return [Problem(key, str(exc).removeprefix(f"{p}: "), value=path)]
    if df.empty:
        return [Problem(key, "the labels table has a header but no rows; add one row per slide", value=path)]
    columns = [c for c in df.columns if c not in ID_COLUMNS]
    if targets_key is not None:  # training needs label columns (external labels may be ids only)
        try:
            specs = resolve_targets(df, list(targets) or None, target_types=target_types,
                                    survival_columns=survival_columns, log=logging.DEBUG)
            for spec in specs:
                check_values(df, spec)
        except LabelTypeError as exc:  # the values of the labels file, not the option, are wrong
            return [Problem(key, str(exc), value=path)]
        except MixmagError as exc:
            blame = targets_key if targets else key
            return [Problem(blame, str(exc), value=_flow(list(targets)) if targets else path)]
        columns = [c for spec in specs for c in spec.columns]
    if ids is None:
        return []
    if columns:  # a slide without any label value is not trained on: it need not be there
        cells = df[columns].apply(lambda c: c.str.strip())
        labelled = sorted(set(df.loc[(cells.notna() & (cells != "")).any(axis=1), "slide_id"]))
    else:
        labelled = sorted(set(df["slide_id"]))
    available = set(ids)
    missing = [s for s in labelled if s not in available]
    if labelled and len(missing) == len(labelled):
        example = f" (e.g. {_few(sorted(available)[:3])})" if available else ""
        return [Problem(key, f"none of its {len(labelled)} labelled slides ({_few(labelled)}) is among {ids_from}"
                             f"{example}; slide_id must be the slide file name without its extension", value=path)]
    if missing:
        return [Problem(key, f"{len(missing)} of {len(labelled)} labelled slides are not among {ids_from}: "
                             f"{_few(missing)}; {partial_hint}", level=partial, value=path)]
    return []


def _train(config: PipelineConfig, *, ids: Collection[str] | None, ids_from: str) -> list[Problem]:
    m, ev = config.mil, config.evaluate
    problems = _device("mil.device", m.device)
    if m.labels is not None:  # `mixmag train` says itself how to give one; a study without trains none
        hint = ("they are excluded and recorded (mil.allow_missing_slides)" if m.allow_missing_slides else
                "training would stop at them: add their slides, fix their slide_id, or set "
                "mil.allow_missing_slides: true to exclude them")
        problems += _labels("mil.labels", m.labels, targets=m.targets, targets_key="mil.targets", ids=ids,
                            target_types=m.target_types, survival_columns=m.survival_columns,
                            ids_from=ids_from, partial="warning" if m.allow_missing_slides else "error",
                            partial_hint=hint)
    for role, path in m.checkpoints.items():
        problems += _exists(f"mil.checkpoints.{role}", path, "a region-encoder checkpoint or `mixmag pretrain` "
                                                             "run folder")
        if role not in OBJECTIVE_KEYS.builtin:
            problems.append(Problem(f"mil.checkpoints.{role}", f"no method uses the role {role!r} (roles: "
                                                               f"{', '.join(OBJECTIVE_KEYS.builtin)})",
                                    level="warning"))
    problems += _exists("evaluate.splits", ev.splits, "a splits file of an earlier run", folder_ok=False)
    return problems


def _features(path: Path, name: str, *, lists: bool) -> tuple[list[Problem], list[str] | None]:
    """A feature folder (or, with ``lists``, a text file listing feature files) and its slide ids."""
    # imported here: h5py loads only when a command checks a feature argument
    from mixmag.io.features import is_feature_list, read_feature_list

    p = Path(path).expanduser()
    if lists and is_feature_list(p):
        listed = read_feature_list(p)
        if not listed:
            return [Problem(name, "the feature list names no feature file (one path per line)", value=path)], None
        return [], sorted(f.stem for f in listed)
    if not p.is_dir():
        return [Problem(name, "folder not found (the output of `mixmag embed`)", value=path)], None
    ids = sorted(f.stem for f in p.glob("*.h5") if not f.name.startswith("."))
    if not ids:
        return [Problem(name, "holds no feature file (<slide_id>.h5, written by `mixmag embed`)", value=path)], None
    return [], ids


# ------------------------------------------------------------------------------------- preflight
def preflight(config: PipelineConfig, *, stages: Collection[str] | str | None = None,
              features: Path | None = None, features_name: str = "FEATURES_DIR") -> list[Problem]:
    """Check the data a config points at, before any stage starts (nothing is written).

    Args:
        config: A validated config (its values are already checked).
        stages: The stages about to run (names in :data:`STAGES`, or :data:`STUDY` for those of
            ``mixmag run``): what they read is checked, and the slides of ``tile`` must be set.
            None checks everything the config sets and requires nothing (``mixmag config show``).
        features: The feature folder a stage command reads instead of the study's own (``mixmag
            train``/``pretrain`` FEATURES_DIR): checked, and the labels are matched against it.
        features_name: The command's name for ``features``, the key of its problems.

    Returns:
        Every problem found, errors and warnings, in stage order.
    """
    if stages == STUDY:
        stages = study_stages(config)
    required = stages is not None
    active = set(STAGES) if stages is None else set(stages)
    if active - set(STAGES):
        raise ValueError(f"unknown stages {sorted(active - set(STAGES))}; use {STAGES}")
    s, out = config.slides, Path(config.out).expanduser().resolve()
    problems: list[Problem] = []
    ids: list[str] | None = None
    ids_from = "the slides of slides.inputs"
    if features is not None:
        # only pretraining reads a list of feature files (mixmag.region.data.feature_paths)
        found, ids = _features(features, features_name, lists=active <= set(FEATURE_LIST_STAGES))
        problems += found
        ids_from = f"the feature files in {features}"
    if "tile" in active:
        problems += _geometry(config)
        problems += _exists("slides.mpp_csv", s.mpp_csv, "a CSV with columns slide,mpp", folder_ok=False)
        if required and not (s.inputs or s.pretrain_inputs):
            problems.append(Problem("slides.inputs", "no slides: list slide files, folders or CSV lists"))
        found, labelled_ids = _slide_inputs("slides.inputs", s.inputs, out)
        found_pool, pool_ids = _slide_inputs("slides.pretrain_inputs", s.pretrain_inputs, out)
        problems += found + found_pool
        if features is None and s.inputs and labelled_ids is not None and pool_ids is not None:
            ids = labelled_ids + pool_ids
    if "embed" in active:
        e = config.embed
        problems += _device("embed.device", e.device)
        if e.weights is not None and e.random_weights:
            problems.append(Problem("embed.random_weights", "set either embed.weights or embed.random_weights, "
                                                            "not both"))
        elif e.weights is not None and weights_kind(e.weights) == "path" and not Path(e.weights).expanduser().exists():
            problems.append(Problem("embed.weights", "file not found (a local weights file or folder; a hub id "
                                                     "looks like org/name or hf-hub:org/name)", value=e.weights))
    if "pretrain" in active:
        problems += _device("region.device", config.region.device)
        if "tile" in active and config.region.pretrain_on == "unlabeled" and not s.pretrain_inputs:
            problems.append(Problem("region.pretrain_on", "is 'unlabeled' but slides.pretrain_inputs is empty; add "
                                                          "unlabeled slides or set region.pretrain_on: all",
                                    value="unlabeled"))
    if "train" in active:
        problems += _train(config, ids=ids, ids_from=ids_from)
    if "external" in active:
        problems += _external(config, out)
    if "diagnose" in active:
        problems += _exists("evaluate.region_labels", config.evaluate.region_labels,
                            "a CSV of region annotations, see docs/concepts/diagnostics.md", folder_ok=False)
    return problems


def _external(config: PipelineConfig, out: Path) -> list[Problem]:
    x = config.external
    problems, ids = _slide_inputs("external.inputs", x.inputs, out, features_ok=True)
    if x.labels is not None:
        if not x.inputs:
            problems.append(Problem("external.labels", "is set but external.inputs is empty: nothing is scored",
                                    level="warning", value=x.labels))
        problems += _labels("external.labels", x.labels, targets=(), targets_key=None,
                            ids=ids if x.inputs else None, ids_from="the slides of external.inputs",
                            partial="warning", partial_hint="they get no prediction")
    return problems


# ------------------------------------------------------------------------------------ formatting
def format_problem(problem: Problem, *, path: str | Path | None = None, text: str | None = None,
                   overrides: Sequence[str] = (), sources: Mapping[str, str] | None = None) -> str:
    """One line for ``problem``, prefixed by where its key was set (``study.yaml:7: ``, ``--set ...: ``)."""
    root = problem.key.split(".")[0].split("[")[0]
    if root not in PipelineConfig.model_fields:  # a command's argument: named in the line itself
        return problem.line()
    return problem.line(where_prefix(problem.key, path=path, text=text, overrides=overrides, sources=sources))


def _covers(key: str, dotted: str) -> bool:
    return dotted == key or dotted.startswith((key + ".", key + "["))


def check_config(path: str | Path | None = None, overrides: Sequence[str] | None = None, *,
                 values: Mapping[str, Any] | None = None, sources: Mapping[str, str] | None = None,
                 stages: Collection[str] | str | None = None, features: Path | None = None,
                 features_name: str = "FEATURES_DIR") -> tuple[PipelineConfig, list[str]]:
    """Load a config (defaults < ``path`` < ``overrides`` < ``values``), check its values and data.

    Every problem is reported at once: a value the models reject is left at its default and the
    data checks of :func:`preflight` still run on the rest.

    Args:
        path: Study config YAML (None: defaults).
        overrides: ``--set section.key=value`` items.
        values: Dotted keys set by a command's named options (applied last).
        sources: How each of ``values`` was given (``{"mil.lr": "--lr"}``), for messages.
        stages: Passed to :func:`preflight`.
        features: Passed to :func:`preflight`.
        features_name: Passed to :func:`preflight`.

    Returns:
        The validated config and the warning lines.

    Raises:
        PreflightError: One line per error (``study.yaml:7: 'mil.labels' = x.csv: file not
            found ...``), in file order; its ``warnings`` hold the warning lines.
    """
    items = list(overrides or [])
    data = merge_data_checked(path, items, values)
    text = None
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            text = None
    errors: list[str] = []
    rejected: list[str] = []
    config: PipelineConfig | None
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        errors = format_config_error(exc, path, text=text, overrides=items, sources=sources).splitlines()
        valid, rejected = validate_valid_part(data, exc)
        config = valid if isinstance(valid, PipelineConfig) else None
    problems = (preflight(config, stages=stages, features=features, features_name=features_name)
                if config is not None else [])
    problems = [p for p in problems if not any(_covers(bad, p.key) for bad in rejected)]

    def lines(level: Level) -> list[str]:
        return [format_problem(p, path=path, text=text, overrides=items, sources=sources)
                for p in problems if p.level == level]

    errors = sorted([*errors, *lines("error")], key=message_order)
    warnings = sorted(lines("warning"), key=message_order)
    if errors or config is None:
        raise PreflightError(errors, warnings)
    return config, warnings
