"""Local training of an adapter from cached split-layer states, with or without DP:
the loop every task shares; the task gives the loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..config import TrainingConfig
from ..models.packing import pack_groups
from ..models.scorer import Scorer
from ..privacy.record_level import PrivateTraining, dp_sgd, group_grad_samples, physical_batches, seed_dp_sgd

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores, targets) -> mean loss


@dataclass(frozen=True)
class LocalTraining:
    """One client's optimisation in one round: the training keys, the task's loss, the
    round's seed, FedProx's ``proximal_mu``, and the rows of one record: with
    ``group_size`` G > 1 record r is rows ``r*G .. r*G+G-1`` and the loss gets scores
    ``[B, G]`` (under DP the group is clipped as one). ``proximal_mu`` > 0 follows every
    optimizer step with ``w -= learning_rate * mu * (w - w_start)``: the proximal term's
    gradient step, decoupled from the data gradient so that under DP-SGD it is neither
    clipped nor noised (it does not depend on the data).
    """

    training: TrainingConfig
    loss: Loss
    seed: int = 0
    proximal_mu: float = 0.0
    group_size: int = 1


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss, optimizer steps and examples processed."""

    loss: float
    steps: int
    examples: int


def train_adapter(
    scorer: Scorer,
    states: list[torch.Tensor],
    targets: torch.Tensor,
    local: LocalTraining,
    private: PrivateTraining | None = None,
    signals: torch.Tensor | None = None,
    shared: list[int] | None = None,
) -> TrainResult:
    """Train the adapter on ``states`` (from :meth:`Scorer.prefix_states`), with each
    row's collaborative ``signals`` when the scorer has a projector; ``targets`` has one
    entry per record (``local.group_size`` rows). With ``shared``, the length of each
    group's shared prompt prefix, each group runs packed into one row (:mod:`fedrec.models.packing`).
    """
    signal_count = len(states) if signals is None else len(signals)
    if not len(states) == len(targets) * local.group_size == signal_count:
        raise ValueError(
            f"{len(states)} states, {len(targets)} targets of {local.group_size} rows, signals of {signal_count} rows"
        )
    training = local.training
    seed_dp_sgd(local.seed, scorer.device())
    optimizer = torch.optim.AdamW(scorer.trainable_parameters(), lr=training.learning_rate, weight_decay=0.0)
    if local.proximal_mu > 0:
        _add_proximal_step(optimizer, training.learning_rate * local.proximal_mu)
    dataset = TensorDataset(torch.arange(len(targets)), targets.float())
    loader = DataLoader(
        dataset, batch_size=training.batch_size, shuffle=True, generator=torch.Generator().manual_seed(local.seed)
    )
    scorer.train()
    batches = _Batches(scorer, states, local, signals, shared)
    try:
        if private is None:
            steps = _train_plain(batches, optimizer, loader, training)
        else:
            steps = _train_private(batches, optimizer, loader, training, private)
    finally:
        scorer.eval()
    return TrainResult(batches.mean_loss(), steps, batches.count)


def _add_proximal_step(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """After each real step of ``optimizer``, move its parameters towards their start."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = [p.detach().clone() for p in params]

    def pull(*_: object) -> None:
        with torch.no_grad():
            for p, p0 in zip(params, start, strict=True):
                p.sub_(rate * (p - p0))

    optimizer.register_step_post_hook(pull)


class _Batches:
    """The loss of batches of cached states (and signals), and its running mean over the examples seen."""

    def __init__(
        self,
        scorer: Scorer,
        states: list[torch.Tensor],
        local: LocalTraining,
        signals: torch.Tensor | None,
        shared: list[int] | None,
    ) -> None:
        if shared is not None and (local.group_size < 2 or len(shared) * local.group_size != len(states)):
            raise ValueError(f"{len(shared)} shared prefixes for {len(states)} rows in groups of {local.group_size}")
        self.scorer, self.states, self.loss, self.signals = scorer, states, local.loss, signals
        self.group_size, self.shared = local.group_size, shared
        self.total, self.count = 0.0, 0

    @property
    def grouped_per_row(self) -> bool:
        """Whether each record is one row (packed groups, or groups of one)."""
        return self.group_size == 1 or self.shared is not None

    def __call__(self, index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = (index[:, None] * self.group_size + torch.arange(self.group_size)).flatten()
        signals = None if self.signals is None else self.signals[rows]
        if self.shared is not None:
            packed = pack_groups(
                [self.states[i] for i in rows.tolist()], self.group_size, [self.shared[i] for i in index.tolist()]
            )
            if signals is not None:
                signals = signals.reshape(len(index), self.group_size, *signals.shape[1:])
            scores = self.scorer.forward_groups(packed, signals)
        else:
            batch, mask = self.scorer.batch([self.states[i] for i in rows.tolist()])
            scores = self.scorer(batch, mask, signals)
            if self.group_size > 1:
                scores = scores.reshape(len(index), self.group_size)
        loss = self.loss(scores, targets.to(scores.device))
        self.total += float(loss.detach()) * len(index)
        self.count += len(index)
        return loss

    def mean_loss(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _train_plain(
    batches: _Batches, optimizer: torch.optim.Optimizer, loader: DataLoader, training: TrainingConfig
) -> int:
    steps = 0
    for _ in range(training.local_epochs):
        for index, y in loader:
            optimizer.zero_grad()
            physical = max(1, training.physical_batch_size // batches.group_size)
            for start in range(0, len(index), physical):
                part = slice(start, start + physical)
                loss = batches(index[part], y[part])
                (loss * len(index[part]) / len(index)).backward()
            optimizer.step()
            steps += 1
    return steps


def _train_private(
    batches: _Batches,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    training: TrainingConfig,
    private: PrivateTraining,
) -> int:
    steps_before = private.accountant.steps
    scorer = batches.scorer
    # The cached states entering the first LoRA layer need no gradient; Opacus computes
    # per-sample gradients from module outputs, which is what torch warns about.
    with (
        warnings.catch_warnings(),
        dp_sgd(scorer.trainable_modules(), optimizer, loader, private) as (dp_optimizer, dp_loader),
    ):
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        for _ in range(training.local_epochs):
            physical = max(1, training.physical_batch_size // batches.group_size)
            with physical_batches(dp_loader, dp_optimizer, physical) as physical_loader:
                for index, y in physical_loader:
                    dp_optimizer.zero_grad()
                    if len(index) == 0:
                        # An empty Poisson batch: no per-sample gradients, but the step
                        # (noise, accounting) still happens.
                        for p in scorer.trainable_parameters():
                            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                    else:
                        batches(index, y).backward()
                        if not batches.grouped_per_row:
                            group_grad_samples(scorer.trainable_parameters(), batches.group_size)
                    dp_optimizer.step()
    return private.accountant.steps - steps_before
