"""scikit-learn-style estimator wrapping the MIL model and its training engine.

Example::

    clf = MILClassifier(method="abmil-20x", epochs=20).fit(train_bags, y_train,
                                                           val_bags=val_bags, val_y=y_val)
    prob = clf.predict_proba(test_bags)[:, 1]

``bags`` is any sequence of :class:`~mixmag.mil.data.BagRegions` (e.g. a lazy
:class:`~mixmag.mil.data.BagDataset` over a feature store) or of ``(R, T, D)`` arrays. ``__init__``
only stores parameters; everything learned lives in attributes ending in ``_``.

The same estimator fits the other endpoints (docs/concepts/endpoints.md)::

    reg = MILClassifier("abmil-20x", endpoint="regression").fit(bags, ki67)       # y: (n,) values
    reg.predict(test_bags)                                                         # (n,) values
    cox = MILClassifier("abmil-20x", endpoint="survival").fit(bags, time_event)   # y: (n, 2)
    cox.predict(test_bags)                                                         # (n,) risks
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mixmag.errors import MixmagRuntimeError, MixmagValueError
from mixmag.mil.abmil import HEADS
from mixmag.mil.data import BagRegions
from mixmag.mil.endpoints import get_endpoint
from mixmag.mil.methods import METHODS, MethodSpec
from mixmag.mil.model import MILModel
from mixmag.mil.settings import MIL_DEFAULTS as _D
from mixmag.mil.train import BagPrediction, FitResult, TrainParams, fit, predict
from mixmag.utils.device import resolve_device
from mixmag.utils.seed import torch_rng_scope

BagLike = BagRegions | np.ndarray
Labels = Sequence[Any] | np.ndarray
#: Parameters of the regression and survival endpoints: a classification model's file does not
#: record them (it is written as before endpoints existed).
ENDPOINT_PARAMS = ("endpoint", "regression_loss", "survival_batch")


def as_bags(bags: Sequence[BagLike]) -> Sequence[BagRegions]:
    """Wrap raw ``(R, T, D)`` arrays as :class:`BagRegions`; sequences of bags pass through lazily."""
    if len(bags) and isinstance(bags[0], np.ndarray):
        return [BagRegions.from_array(b) for b in bags]  # type: ignore[arg-type]
    return bags  # type: ignore[return-value]


class MILClassifier:
    """AB-MIL classifier over tiles or region-encoder outputs.

    Args:
        method: Key of :data:`~mixmag.mil.methods.METHODS` (``abmil-20x``, ``mix-mem`` ...).
        encoder: Region encoder for ``mix-*`` methods (copied at fit, never modified).
        classes: Fixed class labels (default: the sorted unique values of ``y`` at fit).
        hidden_dim: This and every other parameter from ``attention_dim`` to ``precision`` except
            ``balanced`` is the field of the same name of :class:`~mixmag.mil.settings.MilSettings`
            (meaning and default are defined there).
        balanced: Inverse-frequency class weights in the loss.
        endpoint: ``classification``, ``regression`` (``y``: (n,) values, standardised with the
            training mean and sd) or ``survival`` (``y``: (n, 2) time and event; Cox loss).
        regression_loss: ``mse`` or ``huber`` (regression).
        survival_batch: Bags per Cox partial-likelihood step (survival).
        device: ``auto``, ``cpu``, ``cuda`` ...
        seed: Seed of initialisation, bag order and subsampling.
        progress: Progress bar over epochs.
        threads: CPU compute threads of training (None: the usable cores; a run-time choice, not
            part of the model's settings).

    Attributes:
        model_: The trained :class:`~mixmag.mil.model.MILModel` (on CPU after fit).
        classes_: (C,) class labels; column j of :meth:`predict_proba` is ``classes_[j]`` (empty
            for regression and survival).
        target_scale_: ``(mean, sd)`` of the training values (regression), else None.
        history_: Per-epoch ``epoch, train_loss, val_loss, val_auroc, seconds`` dicts.
        best_epoch_: Epoch whose weights were kept.
        criterion_: Model-selection criterion used (``val_auroc``, ``val_loss`` or ``last_epoch``).
        n_features_in_: Tile embedding dimension seen at fit.
    """

    # Explicit keyword parameters (scikit-learn's get_params reads them from the signature); their
    # defaults come from MilSettings, the one place where they are declared.
    def __init__(self, method: str = "abmil-20x", *, encoder: nn.Module | None = None,
                 classes: Sequence[Any] | None = None, hidden_dim: int = _D.hidden_dim,
                 attention_dim: int = _D.attention_dim, dropout: float = _D.dropout, epochs: int = _D.epochs,
                 patience: int = _D.patience, lr: float = _D.lr, encoder_lr_scale: float = _D.encoder_lr_scale,
                 weight_decay: float = _D.weight_decay, freeze_encoder: bool = _D.freeze_encoder,
                 max_instances: int = _D.max_instances, max_regions: int = _D.max_regions,
                 batch_size: int = _D.batch_size, grad_accum: int = _D.grad_accum, balanced: bool = True,
                 standardize: bool = _D.standardize, precision: str = _D.precision,
                 endpoint: str = "classification", regression_loss: str = _D.regression_loss,
                 survival_batch: int = _D.survival_batch, device: str = _D.device,
                 seed: int = _D.seed, progress: bool = False, threads: int | None = _D.threads) -> None:
        self.method = method
        self.encoder = encoder
        self.classes = classes
        self.hidden_dim = hidden_dim
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.epochs = epochs
        self.patience = patience
        self.lr = lr
        self.encoder_lr_scale = encoder_lr_scale
        self.weight_decay = weight_decay
        self.freeze_encoder = freeze_encoder
        self.max_instances = max_instances
        self.max_regions = max_regions
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.balanced = balanced
        self.standardize = standardize
        self.precision = precision
        self.endpoint = endpoint
        self.regression_loss = regression_loss
        self.survival_batch = survival_batch
        self.device = device
        self.seed = seed
        self.progress = progress
        self.threads = threads

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """Constructor parameters (sklearn protocol)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> MILClassifier:
        """Set constructor parameters (sklearn protocol)."""
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise MixmagValueError(f"unknown parameter {k!r} for MILClassifier")
            setattr(self, k, v)
        return self

    @property
    def spec_(self) -> MethodSpec:
        """The method's definition."""
        return METHODS.get(self.method)

    def train_params(self) -> TrainParams:
        """The optimisation settings as a :class:`TrainParams`."""
        spec = self.spec_
        return TrainParams(
            epochs=self.epochs, patience=self.patience, lr=self.lr, encoder_lr_scale=self.encoder_lr_scale,
            weight_decay=self.weight_decay, freeze_encoder=self.freeze_encoder or spec.freeze_encoder,
            max_instances=self.max_instances, max_regions=self.max_regions, batch_size=self.batch_size,
            grad_accum=self.grad_accum, balanced=self.balanced, precision=self.precision, endpoint=self.endpoint,
            regression_loss=self.regression_loss, survival_batch=self.survival_batch)

    def build_model(self, tile_dim: int, n_classes: int) -> MILModel:
        """A freshly initialised model for this method (encoder deep-copied from ``encoder``);
        ``n_classes`` is the head's output width (1 for regression and survival)."""
        spec = self.spec_
        source = spec.build_source()
        if source.needs_encoder and self.encoder is None:
            raise MixmagValueError(f"method {self.method!r} needs a region encoder: pass encoder=...")
        encoder = copy.deepcopy(self.encoder) if source.needs_encoder else None
        with torch_rng_scope(self.seed, torch.device("cpu")):
            head = HEADS.get(spec.head)(source.instance_dim(tile_dim, encoder), n_classes=n_classes,
                                        hidden_dim=self.hidden_dim, attention_dim=self.attention_dim,
                                        dropout=self.dropout)
        return MILModel(source=source, head=head, encoder=encoder)

    def _encode_y(self, y: Labels) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = sorted({v for v in np.asarray(y).tolist() if v not in lookup}, key=str)
        if unknown:
            raise MixmagValueError(f"labels {unknown} are not among the classes {self.classes_.tolist()}")
        return np.asarray([lookup[v] for v in np.asarray(y).tolist()], dtype=np.int64)

    def _targets(self, y: Labels) -> np.ndarray:
        """Engine targets of a regression (standardised values) or survival ((n, 2)) endpoint."""
        arr = np.asarray(y, dtype=np.float64)
        if self.endpoint == "survival":
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise MixmagValueError(f"survival targets are (n, 2) rows of time and event, got shape {arr.shape}")
            return arr
        if arr.ndim != 1:
            raise MixmagValueError(f"regression targets are (n,) values, got shape {arr.shape}")
        assert self.target_scale_ is not None
        mean, sd = self.target_scale_
        return (arr - mean) / sd

    def _fit_targets(self, y: Labels) -> np.ndarray:
        """Set ``classes_``/``target_scale_`` from the training targets; return the engine targets."""
        self.target_scale_: tuple[float, float] | None = None
        if get_endpoint(self.endpoint).uses_classes:
            self.classes_ = np.asarray(sorted(set(np.asarray(y).tolist())) if self.classes is None
                                       else list(self.classes))
            if len(self.classes_) < 2:
                raise MixmagValueError(f"need at least two classes to train, got {self.classes_.tolist()}")
            return self._encode_y(y)
        self.classes_ = np.asarray([], dtype=str)
        arr = np.asarray(y, dtype=np.float64)
        if self.endpoint == "regression":
            sd = float(arr.std()) if arr.ndim == 1 else 0.0
            if arr.ndim == 1 and not sd > 0:
                raise MixmagValueError(f"the {len(arr)} training values are all {arr[0] if len(arr) else 'missing'}; "
                                       "a regression target must vary")
            # the loss sees the value in training-fold standard deviations: one learning rate fits any unit
            self.target_scale_ = (float(arr.mean()), sd)
        targets = self._targets(y)
        if self.endpoint == "survival" and not (targets[:, 1] > 0).any():
            raise MixmagValueError(f"none of the {len(targets)} training bags has an event; the Cox loss needs events")
        return targets

    def _encode_targets(self, y: Labels) -> np.ndarray:
        return self._encode_y(y) if get_endpoint(self.endpoint).uses_classes else self._targets(y)

    def fit(self, bags: Sequence[BagLike], y: Labels, *, val_bags: Sequence[BagLike] | None = None,
            val_y: Labels | None = None) -> MILClassifier:
        """Train on ``bags``; with ``val_bags``/``val_y``, early-stop on the validation metric
        (AUROC; Spearman's ρ for regression, C-index for survival).

        Args:
            bags: Training bags.
            y: Class labels; regression: (n,) values; survival: (n, 2) time and event (1 = event).
            val_bags: Validation bags.
            val_y: Their targets, as ``y``.

        Returns:
            self, with ``model_``, ``classes_``, ``history_``, ``best_epoch_`` set.
        """
        bags = as_bags(bags)
        if len(bags) != len(y):
            raise MixmagValueError(f"{len(bags)} bags but {len(y)} labels")
        endpoint = get_endpoint(self.endpoint)
        y_idx = self._fit_targets(y)
        first = bags[0]
        self.n_features_in_ = int(first.feats.shape[-1])
        model = self.build_model(self.n_features_in_, endpoint.n_outputs(len(self.classes_)))
        if self.standardize:
            model.fit_instance_norm(bags)
        val = as_bags(val_bags) if val_bags is not None else None
        device = resolve_device(self.device)
        result: FitResult = fit(
            model, bags, y_idx, val_bags=val, val_y=None if val_y is None else self._encode_targets(val_y),
            n_classes=len(self.classes_), params=self.train_params(), device=device, seed=self.seed,
            progress=self.progress, desc=self.method, threads=self.threads)
        self.model_ = model.to("cpu")
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.criterion_ = result.criterion
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise MixmagRuntimeError("this MILClassifier is not fitted yet; call fit() first")

    def predict_bags(self, bags: Sequence[BagLike], *, attention: bool = True) -> list[BagPrediction]:
        """Per-bag class probabilities (regression: (1,) value in the target's units; survival:
        (1,) risk) and (optionally) per-instance attention."""
        self._check_fitted()
        device = resolve_device(self.device)
        self.model_.to(device)
        try:
            preds = predict(self.model_, as_bags(bags), device=device, precision=self.precision,
                            attention=attention, endpoint=self.endpoint)
        finally:
            self.model_.to("cpu")
        scale = getattr(self, "target_scale_", None)
        if scale is not None:  # regression: back to the target's units
            for p in preds:
                p.prob = p.prob * scale[1] + scale[0]
        return preds

    def predict_proba(self, bags: Sequence[BagLike]) -> np.ndarray:
        """(n, C) class probabilities (column order: ``classes_``)."""
        if not get_endpoint(self.endpoint).uses_classes:
            raise MixmagValueError(f"a {self.endpoint} model has no class probabilities; use predict()")
        preds = self.predict_bags(bags, attention=False)
        return np.stack([p.prob for p in preds]) if preds else np.zeros((0, len(self.classes_)))

    def predict(self, bags: Sequence[BagLike]) -> np.ndarray:
        """(n,) most probable class label per bag; regression: predicted value; survival: risk
        (log relative hazard, higher = earlier event)."""
        if not get_endpoint(self.endpoint).uses_classes:
            preds = self.predict_bags(bags, attention=False)
            return np.asarray([float(p.prob[0]) for p in preds], dtype=np.float64)
        return self.classes_[np.argmax(self.predict_proba(bags), axis=1)]
