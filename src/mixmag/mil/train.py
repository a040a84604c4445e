"""Training engine for one MIL model: epochs of one-bag steps, validation, early stopping.

Plain functions (``train_one_epoch``, ``evaluate``, ``fit``), CPU-runnable, no framework. Bags have
different lengths, so by default each step sees one bag, which needs no padding and keeps memory
per step bounded by the instance/region subsampling; ``batch_size`` > 1 pads several bags into one
forward pass (much faster for small bags) and ``grad_accum`` sums several passes per update.
Evaluation always uses every instance. Precision follows :func:`mixmag.utils.device.resolve_amp`
for training (``auto``: bf16 on GPUs with native bf16, fp16 with a gradient scaler on other GPUs,
fp32 on the CPU); the predictions of a model being fitted use the same numerics.

Model selection (documented in ``docs/concepts/evaluation.md``): the epoch with the best
validation AUROC (ties broken by lower validation loss) is kept; when the validation bags hold a
single class the AUROC is undefined and the lowest validation loss is used instead (logged); without
validation bags the last epoch is kept. Regression and survival targets select on their own metric
(Spearman's ρ, C-index) the same way, and survival steps take the Cox loss over groups of
``survival_batch`` bags (:mod:`mixmag.mil.endpoints`, docs/concepts/endpoints.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mixmag.mil.data import BagRegions
from mixmag.mil.endpoints import Endpoint, get_endpoint, risk_batches
from mixmag.mil.model import MILModel
from mixmag.mil.settings import MIL_DEFAULTS
from mixmag.utils.cpus import thread_budget
from mixmag.utils.device import resolve_amp
from mixmag.utils.seed import torch_rng_scope

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings of one model; defaults and meaning: :class:`~mixmag.mil.settings.MilSettings`.

    The fields are the optimisation fields of ``MilSettings`` (same names, defaults taken from
    it), plus:

    Attributes:
        balanced: Weight the loss by inverse class frequency of the training bags.
        precision: Resolved by :func:`~mixmag.utils.device.resolve_amp` with ``training=True``.
        endpoint: Key of :data:`~mixmag.mil.endpoints.ENDPOINTS` (the loss and model selection).
        regression_loss: ``mse`` or ``huber`` (regression endpoint).
        survival_batch: Bags per Cox step (survival endpoint).
    """

    epochs: int = MIL_DEFAULTS.epochs
    patience: int = MIL_DEFAULTS.patience
    lr: float = MIL_DEFAULTS.lr
    encoder_lr_scale: float = MIL_DEFAULTS.encoder_lr_scale
    weight_decay: float = MIL_DEFAULTS.weight_decay
    freeze_encoder: bool = MIL_DEFAULTS.freeze_encoder
    max_instances: int = MIL_DEFAULTS.max_instances
    max_regions: int = MIL_DEFAULTS.max_regions
    batch_size: int = MIL_DEFAULTS.batch_size
    grad_accum: int = MIL_DEFAULTS.grad_accum
    balanced: bool = True
    precision: str = MIL_DEFAULTS.precision
    endpoint: str = "classification"
    regression_loss: str = MIL_DEFAULTS.regression_loss
    survival_batch: int = MIL_DEFAULTS.survival_batch


@dataclass
class FitResult:
    """What :func:`fit` learned besides the weights: per-epoch history and the kept epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    criterion: str = "val_auroc"


@dataclass
class BagPrediction:
    """Prediction for one bag: ``prob`` (C,) class probabilities (regression: (1,) value, survival:
    (1,) risk), and per instance (N,) attention, region row, token slot."""

    prob: np.ndarray
    attention: np.ndarray
    region: np.ndarray
    token: np.ndarray


def _limit(model: MILModel, params: TrainParams) -> int:
    return params.max_regions if model.source.needs_encoder else params.max_instances


def make_optimizer(model: MILModel, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW with the head at ``lr`` and a trainable encoder at ``lr * encoder_lr_scale``."""
    groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": params.lr, "name": "head"}]
    if model.encoder is not None:
        frozen = params.freeze_encoder or params.encoder_lr_scale == 0
        for p in model.encoder.parameters():
            p.requires_grad_(not frozen)
        if not frozen:
            groups.append({"params": list(model.encoder.parameters()), "lr": params.lr * params.encoder_lr_scale,
                           "name": "encoder"})
    # foreach: one fused kernel call per step instead of ~8 per tensor (2x faster small-model steps on CPU)
    return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay, foreach=True)


def _set_train_mode(model: MILModel, params: TrainParams) -> None:
    model.train()
    if model.encoder is not None and (params.freeze_encoder or params.encoder_lr_scale == 0):
        model.encoder.eval()  # a frozen encoder is a fixed feature extractor: no dropout / drop-path


def _steps(order: np.ndarray, labels: np.ndarray, endpoint: Endpoint, params: TrainParams) -> list[list[np.ndarray]]:
    """The epoch's optimiser steps, each a list of forward passes (arrays of bag indices).

    One forward pass of ``batch_size`` bags per step, or for a coupled loss (Cox) groups of
    ``survival_batch`` bags drawn stratified by event, ``batch_size`` bags per forward pass.
    """
    if not endpoint.coupled:
        return [[order[i:i + params.batch_size]] for i in range(0, len(order), params.batch_size)]
    groups = risk_batches(order, np.asarray(labels, dtype=np.float64).reshape(-1, 2)[:, 1], params.survival_batch)
    return [[g[i:i + params.batch_size] for i in range(0, len(g), params.batch_size)] for g in groups]


def train_one_epoch(model: MILModel, bags: Sequence[BagRegions], labels: np.ndarray,
                    optimizer: torch.optim.Optimizer, *, params: TrainParams, device: torch.device,
                    rng: np.random.Generator, class_weight: torch.Tensor | None,
                    scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over the training bags in random order; returns the mean training loss per bag.

    ``labels`` are the engine targets of the endpoint (``params.endpoint``): (n,) class indices,
    (n,) standardised values, or (n, 2) time and event.
    """
    _set_train_mode(model, params)
    endpoint = get_endpoint(params.endpoint)
    amp = resolve_amp(params.precision, device, training=True)
    limit = _limit(model, params)
    order = rng.permutation(len(bags))
    total, optimizer_steps = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    steps = _steps(order, labels, endpoint, params)
    for i, step in enumerate(steps):
        outputs = []
        for batch in step:
            inputs = [model.source.prepare(bags[int(b)], limit=limit, rng=rng).to(device) for b in batch]
            with amp.autocast(device):
                outputs.append(model(inputs[0]).logits[None] if len(inputs) == 1 else model.forward_batch(inputs))
        logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        members = np.concatenate(step)
        target = endpoint.target_tensor(labels[members], device)
        per_bag = endpoint.loss(logits.float(), target, class_weight, regression_loss=params.regression_loss)
        loss = per_bag.mean()
        scaled = loss / params.grad_accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        # per-bag losses sum to the step's share of the epoch loss; a coupled (Cox) loss is per event
        total += float(per_bag.detach().sum()) if per_bag.ndim else float(per_bag.detach()) * len(members)
        if (i + 1) % params.grad_accum == 0 or i == len(steps) - 1:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            optimizer_steps += 1
    return total / max(len(order), 1)


@torch.no_grad()
def predict(model: MILModel, bags: Sequence[BagRegions], *, device: torch.device,
            precision: str = "auto", attention: bool = False, endpoint: str = "classification"
            ) -> list[BagPrediction]:
    """Predict every bag with all of its instances (eval mode).

    Args:
        model: Trained model (moved to ``device`` by the caller).
        bags: Bags to predict.
        device: Device to run on.
        precision: See :class:`TrainParams`; resolved as for training, so a model is scored in the
            numerics it was trained in (``auto`` is fp32 on the CPU).
        attention: Also return per-instance attention, region rows and token slots.
        endpoint: The model's endpoint: softmax probabilities (classification) or the raw output
            (regression: standardised value; survival: risk).
    """
    transform = get_endpoint(endpoint).transform
    model.eval()
    amp = resolve_amp(precision, device, training=True)
    empty = np.zeros(0)
    out: list[BagPrediction] = []
    # Without attention, small bags are predicted together (padded, one encoder call) as long as
    # the group holds at most `eval_chunk` regions, which keeps memory as bounded as one big bag.
    for group in ([[b] for b in bags] if attention else _group_bags(bags, model.eval_chunk)):
        if len(group) > 1:
            inputs = [model.source.prepare(bag).to(device) for bag in group]
            with amp.autocast(device):
                logits = model.forward_batch(inputs)
            for prob in transform(logits.float(), dim=1).cpu().numpy():
                out.append(BagPrediction(prob, empty, empty, empty))
            continue
        inp = model.source.prepare(group[0]).to(device)
        with amp.autocast(device):
            res = model(inp)
        prob = transform(res.logits.float(), dim=0).cpu().numpy()
        if attention:
            out.append(BagPrediction(prob, res.attention.float().cpu().numpy(), res.region.cpu().numpy(),
                                     res.token.cpu().numpy()))
        else:
            out.append(BagPrediction(prob, empty, empty, empty))
    return out


def _group_bags(bags: Sequence[BagRegions], max_regions: int) -> list[list[BagRegions]]:
    """Consecutive bags grouped so that each group holds at most ``max_regions`` regions (or one bag)."""
    groups: list[list[BagRegions]] = []
    total = 0
    for bag in bags:
        if groups and total + bag.n_regions <= max_regions:
            groups[-1].append(bag)
            total += bag.n_regions
        else:
            groups.append([bag])
            total = bag.n_regions
    return groups


def fit(model: MILModel, train_bags: Sequence[BagRegions], train_y: np.ndarray, *,
        val_bags: Sequence[BagRegions] | None = None, val_y: np.ndarray | None = None,
        n_classes: int, params: TrainParams, device: torch.device, seed: int = 0,
        progress: bool = False, desc: str = "train", threads: int | None = None) -> FitResult:
    """Train ``model`` in place and load the weights of the selected epoch.

    Args:
        model: Fresh model (moved to ``device`` here).
        train_bags: Training bags.
        train_y: Engine targets of the training bags (``params.endpoint``): (n,) class indices,
            (n,) standardised values, or (n, 2) time and event.
        val_bags: Validation bags for early stopping (optional).
        val_y: Their targets.
        n_classes: Number of classes C (classification).
        params: Optimisation settings.
        device: Device to train on.
        seed: Seeds dropout, bag order and instance subsampling.
        progress: Show a progress bar over epochs.
        desc: Progress-bar label.
        threads: CPU compute threads (default: the usable cores, :func:`~mixmag.utils.cpus.usable_cpus`);
            torch's thread count is restored afterwards.

    Returns:
        The history (``epoch, train_loss, val_loss, val_<metric>, seconds``; ``val_auroc`` for
        classification, ``val_spearman``, ``val_cindex``), kept epoch and criterion.
    """
    with thread_budget(threads), torch_rng_scope(seed, device):
        return _fit(model, train_bags, train_y, val_bags=val_bags, val_y=val_y, n_classes=n_classes,
                    params=params, device=device, seed=seed, progress=progress, desc=desc)


def _fit(model: MILModel, train_bags: Sequence[BagRegions], train_y: np.ndarray, *,
         val_bags: Sequence[BagRegions] | None, val_y: np.ndarray | None, n_classes: int,
         params: TrainParams, device: torch.device, seed: int, progress: bool, desc: str) -> FitResult:
    """:func:`fit` inside its RNG scope."""
    rng = np.random.default_rng(seed)
    model.to(device)
    optimizer = make_optimizer(model, params)
    amp = resolve_amp(params.precision, device, training=True)
    scaler = torch.amp.GradScaler(device.type) if amp.grad_scaler else None
    endpoint = get_endpoint(params.endpoint)
    dtype = np.int64 if endpoint.uses_classes else np.float64
    train_y = np.asarray(train_y, dtype=dtype)
    class_weight = endpoint.class_weight(train_y, n_classes, params.balanced, device)
    score_name = endpoint.score_name
    has_val = val_bags is not None and val_y is not None and len(val_bags) > 0
    criterion = "last_epoch"
    if has_val:
        assert val_y is not None
        val_y = np.asarray(val_y, dtype=dtype)
        criterion = endpoint.criterion(val_y)
        if criterion == "val_loss" and endpoint.uses_classes:
            logger.warning("%s: the %d validation bags are all one class; early stopping on validation loss",
                           desc, len(val_y))
        elif criterion != score_name:
            logger.warning("%s: the %s of the %d validation bags is undefined (a constant value, or no event); "
                           "model selection on %s", desc, score_name.removeprefix("val_"), len(val_y),
                           "validation loss" if criterion == "val_loss" else "the last epoch")
    result = FitResult(criterion=criterion)
    best_key: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    bar = tqdm(range(1, params.epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        train_loss = train_one_epoch(model, train_bags, train_y, optimizer, params=params, device=device,
                                     rng=rng, class_weight=class_weight, scaler=scaler)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": math.nan, score_name: math.nan}
        if has_val:
            assert val_bags is not None and val_y is not None
            probs = np.stack([p.prob for p in predict(model, val_bags, device=device, precision=params.precision,
                                                      endpoint=params.endpoint)])
            row[score_name], row["val_loss"] = endpoint.val_scores(probs, val_y, regression_loss=params.regression_loss)
        row["seconds"] = time.perf_counter() - t0
        result.history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", **{score_name: f"{row[score_name]:.3f}"})
        # larger is better: (metric, -loss) or (-loss, 0); the last epoch wins without validation; an
        # undefined metric (e.g. constant predictions of a regression head) never beats a defined one
        metric = row[score_name] if math.isfinite(row[score_name]) else -math.inf
        key = {score_name: (metric, -row["val_loss"]), "val_loss": (-row["val_loss"], 0.0),
               "last_epoch": (float(epoch), 0.0)}[criterion]
        if key > best_key:
            best_key, stale, result.best_epoch = key, 0, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= params.patience:
                logger.debug("%s: early stop at epoch %d (best %d)", desc, epoch, result.best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return result
