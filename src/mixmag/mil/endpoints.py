"""What the MIL model is trained to output per endpoint: head size, loss, predictions, model selection.

One MIL model serves every endpoint (docs/concepts/endpoints.md); only its last linear layer and
its loss differ. :data:`ENDPOINTS` holds one :class:`Endpoint` per endpoint:

================ =========== =================================================== ===================
endpoint         outputs     loss (per optimiser step)                            prediction
================ =========== =================================================== ===================
classification   C logits    cross-entropy, inverse-frequency class weights       softmax (C,)
regression       1           MSE or Huber (δ = 1) on the standardised value       value (de-standardised)
survival         1           Cox negative partial log-likelihood (Breslow ties)   risk = log hazard ratio
================ =========== =================================================== ===================

The Cox loss compares each patient with its *risk set* (everyone still event-free at its event
time), so one bag per step gives nothing to compare: a survival step accumulates the outputs of
``survival_batch`` bags (``batch_size`` bags per forward pass, the graphs kept until the step's
single backward) and takes the partial likelihood over them. The step's bags are drawn stratified
by event, so every step holds its share of events. The metric side of each endpoint (C-index,
Spearman ...) is :data:`mixmag.evaluate.endpoints.ENDPOINT_METRICS`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mixmag.errors import MixmagValueError
from mixmag.evaluate.endpoints import ENDPOINT_METRICS, EndpointMetrics
from mixmag.registry import Registry

#: Huber transition on the standardised scale: quadratic within one training-fold sd, linear beyond.
HUBER_DELTA = 1.0


class Endpoint(ABC):
    """Training side of one endpoint. Targets ``y`` are what the engine sees (classes, standardised
    values, or (time, event) rows); predictions are the model's outputs after :meth:`transform`."""

    key: ClassVar[str]
    #: The loss couples the bags of a step (Cox): steps are groups of ``survival_batch`` bags.
    coupled: ClassVar[bool] = False
    #: Predictions are class probabilities (``classes_``, ``predict_proba``).
    uses_classes: ClassVar[bool] = False

    @property
    def metrics(self) -> EndpointMetrics:
        """The endpoint's metrics (:data:`~mixmag.evaluate.endpoints.ENDPOINT_METRICS`)."""
        return ENDPOINT_METRICS.get(self.key)

    @property
    def score_name(self) -> str:
        """History column and model-selection criterion of the validation metric (``val_auroc`` ...)."""
        return f"val_{self.metrics.metric.name}"

    @abstractmethod
    def n_outputs(self, n_classes: int) -> int:
        """Width of the head's last layer."""

    @abstractmethod
    def target_tensor(self, y: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B,) or (B, 2) engine targets of a step as a tensor."""

    @abstractmethod
    def loss(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, *,
             regression_loss: str = "mse") -> torch.Tensor:
        """Loss of one step: (B,) per-bag losses, or a 0-d loss of the whole step when :attr:`coupled`.

        Args:
            out: (B, K) float32 head outputs.
            target: From :meth:`target_tensor`.
            weight: Per-class loss weights (classification) or None.
            regression_loss: ``mse`` or ``huber`` (regression).
        """

    @abstractmethod
    def transform(self, out: torch.Tensor, dim: int) -> torch.Tensor:
        """Head outputs -> predictions along ``dim`` (softmax probabilities, or unchanged)."""

    def class_weight(self, y: np.ndarray, n_classes: int, balanced: bool, device: torch.device) -> torch.Tensor | None:
        """Loss weights from the training targets (None: unweighted)."""
        return None

    def criterion(self, val_y: np.ndarray) -> str:
        """Model selection on these validation targets: :attr:`score_name`, or ``val_loss`` where
        the metric is undefined (one class, a constant value, no comparable pair)."""
        return self.score_name if self.defined(val_y) else "val_loss"

    @abstractmethod
    def defined(self, y: np.ndarray) -> bool:
        """Whether the validation metric is defined on these targets."""

    def val_scores(self, pred: np.ndarray, y: np.ndarray, *, regression_loss: str = "mse") -> tuple[float, float]:
        """(metric or NaN, loss) of validation predictions (n, K) and engine targets."""
        out = torch.as_tensor(np.asarray(pred, dtype=np.float32))
        loss = self.loss(out, self.target_tensor(y, torch.device("cpu")), None, regression_loss=regression_loss)
        score = self.metrics.metric.score(y, pred[:, 0] if pred.shape[1] == 1 else pred)
        return score, float(loss.mean())


ENDPOINTS: Registry[Endpoint] = Registry("endpoint")


class Classification(Endpoint):
    """C logits, weighted cross-entropy, softmax probabilities; selection on validation AUROC."""

    key = "classification"
    uses_classes = True

    def n_outputs(self, n_classes: int) -> int:  # noqa: D102
        return n_classes

    def target_tensor(self, y: np.ndarray, device: torch.device) -> torch.Tensor:  # noqa: D102
        return torch.as_tensor([int(v) for v in y], device=device)

    def loss(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, *,
             regression_loss: str = "mse") -> torch.Tensor:  # noqa: D102
        per_bag = F.cross_entropy(out, target, reduction="none")
        if weight is not None:
            # weight each bag's loss and average over bags: cross_entropy(weight=...) would divide
            # by the batch's weight sum, which cancels the weights exactly for one-bag steps
            per_bag = per_bag * weight[target]
        return per_bag

    def transform(self, out: torch.Tensor, dim: int) -> torch.Tensor:  # noqa: D102
        return torch.softmax(out, dim=dim)

    def class_weight(self, y: np.ndarray, n_classes: int, balanced: bool, device: torch.device) -> torch.Tensor | None:
        """Inverse class frequency ``n / (C n_c)`` of the training bags (with ``balanced``)."""
        if not balanced:
            return None
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
        return torch.as_tensor(w, dtype=torch.float32, device=device)

    def defined(self, y: np.ndarray) -> bool:  # noqa: D102
        return len(np.unique(y)) > 1

    def val_scores(self, pred: np.ndarray, y: np.ndarray, *, regression_loss: str = "mse") -> tuple[float, float]:
        """(AUROC or NaN for one class, mean cross-entropy) of validation probabilities."""
        from mixmag.evaluate.metrics import auroc

        y = np.asarray(y, dtype=np.int64)
        eps = 1e-7
        loss = float(-np.mean(np.log(np.clip(pred[np.arange(len(y)), y], eps, 1.0))))
        prob = pred[:, 1] if pred.shape[1] == 2 else pred
        return auroc(y, prob, on_single_class="nan"), loss


class Regression(Endpoint):
    """One output, the standardised value; MSE or Huber; selection on validation Spearman's ρ."""

    key = "regression"

    def n_outputs(self, n_classes: int) -> int:  # noqa: D102
        return 1

    def target_tensor(self, y: np.ndarray, device: torch.device) -> torch.Tensor:  # noqa: D102
        return torch.as_tensor(np.asarray(y, dtype=np.float32), device=device)

    def loss(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, *,
             regression_loss: str = "mse") -> torch.Tensor:  # noqa: D102
        pred = out[:, 0]
        if regression_loss == "huber":
            return F.huber_loss(pred, target, reduction="none", delta=HUBER_DELTA)
        return (pred - target) ** 2

    def transform(self, out: torch.Tensor, dim: int) -> torch.Tensor:  # noqa: D102
        return out

    def defined(self, y: np.ndarray) -> bool:  # noqa: D102
        return len(np.unique(y)) > 1


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood per event, Breslow's handling of tied times.

    ``-1/E Σ_{i: event_i} [r_i - log Σ_{j: t_j >= t_i} exp(r_j)]``: the risk set of an event holds
    every bag of the step still event-free at its time (tied times included).

    Args:
        risk: (B,) predicted log relative hazards.
        time: (B,) follow-up times.
        event: (B,) 1 = event, 0 = censored.

    Returns:
        0-d loss; 0 (with zero gradients) when the step holds no event.
    """
    events = event > 0
    if not bool(events.any()):
        return risk.sum() * 0.0
    at_risk = time[None, :] >= time[:, None]  # (i, j): j is in the risk set of i
    log_den = torch.logsumexp(risk[None, :].masked_fill(~at_risk, -math.inf), dim=1)
    return -((risk - log_den)[events]).mean()


class Survival(Endpoint):
    """One output, the log relative hazard; Cox loss over risk sets of several bags; selection on
    validation C-index."""

    key = "survival"
    coupled = True

    def n_outputs(self, n_classes: int) -> int:  # noqa: D102
        return 1

    def target_tensor(self, y: np.ndarray, device: torch.device) -> torch.Tensor:  # noqa: D102
        return torch.as_tensor(np.asarray(y, dtype=np.float32).reshape(-1, 2), device=device)

    def loss(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, *,
             regression_loss: str = "mse") -> torch.Tensor:  # noqa: D102
        return cox_loss(out[:, 0], target[:, 0], target[:, 1])

    def transform(self, out: torch.Tensor, dim: int) -> torch.Tensor:  # noqa: D102
        return out

    def defined(self, y: np.ndarray) -> bool:  # noqa: D102
        y = np.asarray(y, dtype=np.float64).reshape(-1, 2)
        return bool((y[:, 1] > 0).any()) and len(y) > 1

    def criterion(self, val_y: np.ndarray) -> str:
        """``val_cindex``; without any validation event neither metric nor loss exists: last epoch."""
        return self.score_name if self.defined(val_y) else "last_epoch"


ENDPOINTS.add("classification", Classification())
ENDPOINTS.add("regression", Regression())
ENDPOINTS.add("survival", Survival())


def risk_batches(order: np.ndarray, event: np.ndarray, size: int) -> list[np.ndarray]:
    """Split a shuffled bag order into steps of about ``size`` bags, each with its share of events.

    Events and censored bags are dealt out separately over ``ceil(n / size)`` steps (in their
    shuffled order), so no step is left without events while others hold many; inside a step the
    bags keep the shuffled order. Consumes no randomness.

    Args:
        order: (n,) shuffled bag indices.
        event: (n_bags,) event status of every bag (indexed by bag index).
        size: Bags per step.
    """
    n_steps = max(1, math.ceil(len(order) / size))
    has_event = np.asarray(event)[order] > 0
    steps: list[list[int]] = [[] for _ in range(n_steps)]
    for flag in (True, False):
        members = np.flatnonzero(has_event == flag)
        for k, part in enumerate(np.array_split(members, n_steps)):
            steps[k] += part.tolist()
    return [order[np.sort(np.asarray(s, dtype=np.int64))] for s in steps if s]


def get_endpoint(key: str) -> Endpoint:
    """The endpoint registered as ``key``.

    Raises:
        MixmagValueError: Unknown endpoint (lists the known ones).
    """
    if key not in ENDPOINTS:
        raise MixmagValueError(f"unknown endpoint {key!r}; use one of {', '.join(ENDPOINTS.keys())}")
    return ENDPOINTS.get(key)
