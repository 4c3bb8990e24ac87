"""A privacy ledger that persists across rounds: the DP-SGD steps of a client's
record-level DP, or the server's client-level releases.

Opacus accountants keep ``history``: a list of ``(noise_multiplier, sample_rate,
steps)``. :class:`PersistentAccountant` stores that list in a Flower ``ConfigRecord``
(kept in ``context.state``), so epsilon composes over every round the client joins;
:func:`save_ledger` / :func:`load_ledger` keep it in a file on the node's disk, so a
restarted node continues its budget instead of starting a new one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord

from ..config import ACCOUNTANTS
from ..files import write_atomic
from .opacus_api import IAccountant, RDPAccountant, create_accountant, rdp_analysis


def unflatten(flat: list[float]) -> list[tuple[float, float, int]]:
    """The history entries of :meth:`PersistentAccountant.flat`'s list."""
    if len(flat) % 3:
        raise ValueError(f"a flat ledger holds triples (noise, rate, steps); got {len(flat)} values")
    return [(float(flat[i]), float(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus's RDP of one step of the subsampled Gaussian at its default orders."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders))
    rdp.setflags(write=False)  # shared by every later call
    return rdp


@dataclass
class PersistentAccountant:
    """The Gaussian mechanism's history ``(noise_multiplier, sample_rate, steps)`` under one
    accounting mechanism (Opacus's accountants).
    """

    mechanism: str = "rdp"
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanism not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got '{self.mechanism}'")

    def merged(self) -> list[tuple[float, float, int]]:
        """The history with the steps of equal ``(noise_multiplier, sample_rate)``
        entries summed, in order of first appearance (composition commutes: the same guarantee).
        """
        steps: dict[tuple[float, float], int] = {}
        for noise_multiplier, sample_rate, count in self.history:
            steps[(noise_multiplier, sample_rate)] = steps.get((noise_multiplier, sample_rate), 0) + count
        return [(sigma, rate, count) for (sigma, rate), count in steps.items()]

    def opacus(self) -> IAccountant:
        """A fresh Opacus accountant holding the :meth:`merged` history."""
        accountant = create_accountant(self.mechanism)
        accountant.history = self.merged()
        return accountant

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far (0 before any step). Under RDP, Opacus's own computation
        with each distinct entry's per-step RDP computed once per process: a server's
        client-level ledger gains an entry of its own noise every round (the noise
        follows the survivors), and recomputing all of them made each round slower.
        """
        if not self.history:
            return 0.0
        if self.mechanism != "rdp":
            return self.opacus().get_epsilon(delta=delta)
        rdp = sum(count * _rdp_of_one_step(sigma, rate) for sigma, rate, count in self.merged())
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(epsilon)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon if ``steps`` more steps were taken with these settings."""
        trial = PersistentAccountant(self.mechanism, [*self.history, (noise_multiplier, sample_rate, steps)])
        return trial.epsilon(delta)

    @property
    def steps(self) -> int:
        """DP-SGD steps taken over all rounds."""
        return sum(step for _, _, step in self.history)

    def flat(self) -> list[float]:
        """The history as one flat list ``[noise, rate, steps, noise, rate, steps, ...]`` (a metric value)."""
        return [float(value) for entry in self.history for value in entry]

    def to_record(self) -> ConfigRecord:
        """Serialise into a ``ConfigRecord`` (for ``context.state``)."""
        return ConfigRecord(
            {
                "mechanism": self.mechanism,
                "noise-multipliers": [float(h[0]) for h in self.history],
                "sample-rates": [float(h[1]) for h in self.history],
                "steps": [int(h[2]) for h in self.history],
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord | None, mechanism: str) -> PersistentAccountant:
        """Restore from ``to_record``'s output; a new ledger when ``record`` is None.

        A stored ledger of another mechanism is refused: switching accountants
        mid-run would silently restart the budget.
        """
        if record is None:
            return cls(mechanism)
        if record["mechanism"] != mechanism:
            raise ValueError(
                f"this client's privacy ledger uses the '{record['mechanism']}' accountant; "
                f"the run asks for '{mechanism}'"
            )
        sigmas, rates, steps = (list(record[k]) for k in ("noise-multipliers", "sample-rates", "steps"))
        return cls(mechanism, [(float(s), float(q), int(n)) for s, q, n in zip(sigmas, rates, steps, strict=True)])


class LedgerError(ValueError):
    """A privacy ledger file cannot be read: the node must not train on a guess."""


def save_ledger(path: str | Path, accountant: PersistentAccountant) -> None:
    """Write the ledger to ``path`` atomically (a synced temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        path, json.dumps({"mechanism": accountant.mechanism, "history": [list(h) for h in accountant.history]})
    )


def load_ledger(path: str | Path, mechanism: str) -> PersistentAccountant:
    """The ledger saved at ``path`` (a new one if there is no file). A corrupt file or
    another mechanism's ledger is refused: deleting it would reset the node's budget.
    """
    path = Path(path)
    if not path.exists():
        return PersistentAccountant(mechanism)
    try:
        data = json.loads(path.read_text())
        stored = data["mechanism"]
        history = [(float(s), float(q), int(n)) for s, q, n in data["history"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LedgerError(
            f"privacy ledger {path} cannot be read ({type(err).__name__}: {err}); refusing to train, "
            "since starting a new ledger would reset this node's privacy budget"
        ) from None
    if stored != mechanism:
        raise LedgerError(f"privacy ledger {path} uses the '{stored}' accountant; the run asks for '{mechanism}'")
    return PersistentAccountant(mechanism, history)
