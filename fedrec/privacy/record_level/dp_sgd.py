"""Record-level DP-SGD with Opacus over the adapter's parameters only.

:func:`plan_round` fixes a round's noise, sampling rate and steps (calibrating the
noise so that the planned rounds fit ``target-epsilon``); :func:`decline_reason`
enforces the budget before any step; :func:`dp_sgd` wires Opacus (hooks mode,
Poisson sampling) around a model, optimizer and loader and records the steps taken in
the client's :class:`~fedrec.privacy.ledger.PersistentAccountant`.
"""

from __future__ import annotations

import functools
import math
import secrets
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ...config import RecordDPConfig
from ..ledger import PersistentAccountant
from ..opacus_api import BatchMemoryManager, DPOptimizer, PrivacyEngine, get_noise_multiplier


@dataclass(frozen=True)
class RoundPlan:
    """What one round of local DP-SGD will do."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class PrivateTraining:
    """DP-SGD for one round: the plan, the clipping bound and the client's ledger."""

    plan: RoundPlan
    max_grad_norm: float
    accountant: PersistentAccountant
    secure_noise: bool = False  # see :class:`SecureNoiseEngine`


class SecureNoiseEngine(PrivacyEngine):
    """Opacus's secure mode (the noise and the Poisson sample drawn from a generator
    nobody can reproduce, the Gaussian sampled as a sum of four so that its float
    rounding does not leak, per Opacus's ``_generate_noise``) with a torch generator
    seeded from the operating system's CSPRNG: Opacus's own secure mode needs
    ``torchcsprng``, which has no build for this torch. Without it, DP-SGD draws from
    torch's global generator, which fedrec seeds from the run's seed (reproducible
    simulations): whoever knows the configuration can recompute the noise.

    Two generators: the Poisson sample is drawn on the CPU (``secure_rng``, Opacus's
    sampler), the noise where the gradients are (``noise_rng`` on ``device``): Opacus
    hands one generator to both, and a CPU generator cannot draw a CUDA tensor.
    """

    def __init__(self, *, accountant: str, device: torch.device | str = "cpu") -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # it is turned on below
            super().__init__(accountant=accountant)
        self.secure_mode = True
        self.secure_rng = torch.Generator().manual_seed(secrets.randbits(63))
        self.noise_rng = torch.Generator(device).manual_seed(secrets.randbits(63))

    def _prepare_optimizer(self, **kwargs) -> DPOptimizer:
        """Opacus's DP optimizer, drawing its noise from ``noise_rng``."""
        optimizer = super()._prepare_optimizer(**kwargs)
        optimizer.generator = self.noise_rng
        return optimizer


REPRODUCIBLE_NOISE_NOTICE = (
    "fedrec: DP-SGD draws its noise from torch's generator, seeded by the run's seed (reproducible "
    "simulations: whoever knows the configuration can recompute the noise); set secure-noise = true "
    "for noise drawn from the operating system's CSPRNG"
)


def _reproducible_noise_engine(mechanism: str) -> PrivacyEngine:
    """Opacus's engine without secure mode. Opacus warns about it on every construction,
    and fedrec builds one a round inside ``catch_warnings`` (which resets Python's
    once-per-location registry): a long simulation printed it every round. fedrec says it
    once per process instead.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=mechanism)
    _note_reproducible_noise()
    return engine


@functools.cache
def _note_reproducible_noise() -> None:
    warnings.warn(REPRODUCIBLE_NOISE_NOTICE, UserWarning, stacklevel=2)


def seed_dp_sgd(seed: int, device: torch.device) -> None:
    """Seed the generators DP-SGD draws from without ``secure-noise``: the CPU's default
    (Opacus's Poisson sample) and ``device``'s (the noise, where the gradients are). The
    effect of ``torch.manual_seed`` on both, without its queueing of a seed, with a
    formatted stack, for every accelerator backend torch knows (about 1.7 ms a round).
    """
    torch.default_generator.manual_seed(seed)
    if device.type != "cpu":
        torch.get_device_module(device.type).manual_seed(seed)


def plan_round(
    dp: RecordDPConfig,
    planned_rounds: int,
    num_examples: int,
    batch_size: int,
    epochs: int,
    spent: Sequence[tuple[float, float, int]] = (),
) -> RoundPlan:
    """Sampling rate ``1/ceil(N/B)`` (Poisson, expected batch ~B), ``epochs/q`` steps, and
    the noise multiplier (``noise-multiplier``, or the smallest that fits ``planned_rounds``
    such rounds into ``target-epsilon`` after the other releases ``spent`` on the same
    data, e.g. federated item statistics).
    """
    batches = max(1, math.ceil(num_examples / batch_size))
    sample_rate, steps = 1.0 / batches, epochs * batches
    sigma = dp.noise_multiplier or _calibrated_noise(dp, sample_rate, steps * planned_rounds, tuple(spent))
    return RoundPlan(sigma, sample_rate, steps)


@functools.lru_cache(maxsize=256)
def _calibrated_noise(
    dp: RecordDPConfig, sample_rate: float, steps: int, spent: tuple[tuple[float, float, int], ...]
) -> float:
    """The noise multiplier that fits ``steps`` at ``sample_rate`` into the budget after
    ``spent``; cached: a simulation's clients of equal size share one search.
    """
    if spent:
        return _noise_after(dp, sample_rate, steps, spent)
    return get_noise_multiplier(
        target_epsilon=dp.target_epsilon,
        target_delta=dp.target_delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=dp.accountant,
    )


def _noise_after(
    dp: RecordDPConfig, sample_rate: float, steps: int, spent: Sequence[tuple[float, float, int]]
) -> float:
    """The smallest noise multiplier (within 0.1 %) whose ``steps`` fit into the budget left after ``spent``."""
    prior = PersistentAccountant(dp.accountant, list(spent))
    if prior.epsilon(dp.target_delta) >= dp.target_epsilon:
        raise ValueError(
            f"the releases before DP-SGD already spend epsilon {prior.epsilon(dp.target_delta):.3f} "
            f">= target-epsilon {dp.target_epsilon:g}: raise item-statistics-noise or target-epsilon"
        )

    def fits(sigma: float) -> bool:
        return prior.epsilon_after(sigma, sample_rate, steps, dp.target_delta) <= dp.target_epsilon

    low, high = 0.0, 1.0
    while not fits(high):
        low, high = high, high * 2
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def decline_reason(dp: RecordDPConfig, plan: RoundPlan, accountant: PersistentAccountant) -> str | None:
    """Why this round must not run (it would exceed the budget), or None."""
    after = accountant.epsilon_after(plan.noise_multiplier, plan.sample_rate, plan.steps, dp.target_delta)
    if after > dp.target_epsilon * 1.001:
        spent = accountant.epsilon(dp.target_delta)
        return (
            f"privacy budget: epsilon {spent:.3f} spent, this round would reach {after:.3f} "
            f"> target-epsilon {dp.target_epsilon:g} (delta {dp.target_delta:g})"
        )
    return None


@contextmanager
def dp_sgd(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, private: PrivateTraining
) -> Iterator[tuple[DPOptimizer, DataLoader]]:
    """Make training private for the duration of the block.

    Per-sample gradient hooks are attached to ``module`` (only to submodules with
    trainable parameters) and removed on exit; every optimizer step is recorded in
    ``private.accountant``. ``loader`` must have ``ceil(N / B)`` batches so that the
    sample rate equals the plan's.
    """
    plan, accountant = private.plan, private.accountant
    if private.secure_noise:
        device = next(p.device for p in module.parameters() if p.requires_grad)
        engine = SecureNoiseEngine(accountant=accountant.mechanism, device=device)
    else:
        engine = _reproducible_noise_engine(accountant.mechanism)
    engine.accountant.history = list(accountant.history)
    hooks, dp_optimizer, dp_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=private.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
        wrap_model=False,
    )
    if not math.isclose(1.0 / len(dp_loader), plan.sample_rate):
        hooks.cleanup()
        raise ValueError(f"loader has {len(dp_loader)} batches; the plan's sample rate is {plan.sample_rate}")
    try:
        yield dp_optimizer, dp_loader
    finally:
        hooks.cleanup()
        accountant.history = list(engine.accountant.history)


def physical_batches(loader: DataLoader, optimizer: DPOptimizer, max_physical_batch_size: int) -> BatchMemoryManager:
    """Split Poisson batches into physical batches of bounded size; the optimizer
    steps once per logical batch (Opacus's ``BatchMemoryManager``).
    """
    return BatchMemoryManager(data_loader=loader, max_physical_batch_size=max_physical_batch_size, optimizer=optimizer)


def group_grad_samples(params: list[torch.nn.Parameter], group_size: int) -> None:
    """Make consecutive runs of ``group_size`` per-sample gradients one record's (their
    sum, divided by ``group_size``: Opacus scales a mean loss's per-sample gradients by
    the rows in the batch, here ``group_size`` times the records), before clipping.
    """
    for p in params:
        samples = p.grad_sample
        if isinstance(samples, list):
            raise ValueError("group the per-sample gradients of each physical batch before the next one")
        if len(samples) % group_size:
            raise ValueError(f"{len(samples)} per-sample gradients do not form groups of {group_size}")
        p.grad_sample = samples.reshape(-1, group_size, *samples.shape[1:]).sum(1) / group_size
