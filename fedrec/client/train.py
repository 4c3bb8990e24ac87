"""Local training of the adapter from cached split-layer states, with or without DP."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..models.scorer import PreferenceScorer
from ..privacy.accountant import PersistentAccountant
from ..privacy.dp import RoundPlan, dp_sgd, physical_batches


@dataclass(frozen=True)
class TrainSettings:
    """Local optimisation: ``batch_size`` is the (expected) logical batch,
    ``physical_batch_size`` bounds memory. ``proximal_mu`` > 0 (FedProx) follows every
    optimizer step with ``w -= learning_rate * mu * (w - w_start)``: the proximal
    term's gradient step, decoupled from the data gradient so that under DP-SGD it is
    neither clipped nor noised (it does not depend on the data).
    """

    epochs: int = 1
    batch_size: int = 16
    physical_batch_size: int = 16
    learning_rate: float = 5e-4
    proximal_mu: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD for one round: the plan, the clipping bound and the client's ledger."""

    plan: RoundPlan
    max_grad_norm: float
    accountant: PersistentAccountant


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss, optimizer steps and examples processed."""

    loss: float
    steps: int
    examples: int


def train_adapter(
    scorer: PreferenceScorer,
    states: list[torch.Tensor],
    labels: torch.Tensor,
    settings: TrainSettings,
    private: PrivateTraining | None = None,
) -> TrainResult:
    """Train the adapter on ``states`` (from :meth:`PreferenceScorer.prefix_states`)."""
    if len(states) != len(labels):
        raise ValueError(f"{len(states)} states but {len(labels)} labels")
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(scorer.trainable_parameters(), lr=settings.learning_rate, weight_decay=0.0)
    if settings.proximal_mu > 0:
        _add_proximal_step(optimizer, settings.learning_rate * settings.proximal_mu)
    dataset = TensorDataset(torch.arange(len(states)), labels.float())
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    scorer.train()
    tracker = _LossTracker()
    try:
        if private is None:
            steps = _train_plain(scorer, states, optimizer, loader, settings, tracker)
        else:
            steps = _train_private(scorer, states, optimizer, loader, settings, private, tracker)
    finally:
        scorer.eval()
    return TrainResult(tracker.mean(), steps, tracker.count)


def _add_proximal_step(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """After each real step of ``optimizer``, move its parameters towards their start."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = [p.detach().clone() for p in params]

    def pull(*_: object) -> None:
        with torch.no_grad():
            for p, p0 in zip(params, start, strict=True):
                p.sub_(rate * (p - p0))

    optimizer.register_step_post_hook(pull)


class _LossTracker:
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.total += float(loss.detach()) * n
        self.count += n

    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _loss(scorer: PreferenceScorer, states: list[torch.Tensor], index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    batch, mask = scorer.batch([states[i] for i in index.tolist()])
    logits = scorer(batch, mask)
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.device))


def _train_plain(scorer, states, optimizer, loader, settings, tracker) -> int:
    steps = 0
    for _ in range(settings.epochs):
        for index, y in loader:
            optimizer.zero_grad()
            for start in range(0, len(index), settings.physical_batch_size):
                part = slice(start, start + settings.physical_batch_size)
                loss = _loss(scorer, states, index[part], y[part])
                (loss * len(index[part]) / len(index)).backward()
                tracker.add(loss, len(index[part]))
            optimizer.step()
            steps += 1
    return steps


def _train_private(scorer, states, optimizer, loader, settings, private, tracker) -> int:
    steps_before = private.accountant.steps
    # The cached states entering the first LoRA layer need no gradient; Opacus computes
    # per-sample gradients from module outputs, which is what torch warns about.
    with (
        warnings.catch_warnings(),
        dp_sgd(scorer, optimizer, loader, private.plan, private.max_grad_norm, private.accountant) as (
            dp_optimizer,
            dp_loader,
        ),
    ):
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        for _ in range(settings.epochs):
            with physical_batches(dp_loader, dp_optimizer, settings.physical_batch_size) as physical_loader:
                for index, y in physical_loader:
                    dp_optimizer.zero_grad()
                    if len(index) == 0:
                        # An empty Poisson batch: no per-sample gradients, but the step
                        # (noise, accounting) still happens.
                        for p in scorer.trainable_parameters():
                            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                    else:
                        loss = _loss(scorer, states, index, y)
                        loss.backward()
                        tracker.add(loss, len(index))
                    dp_optimizer.step()
    return private.accountant.steps - steps_before
