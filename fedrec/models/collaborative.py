"""Matrix factorization, the collaborative model: ``score(u, i) = <p_u, q_i> + b_i``.

The item embeddings ``q`` and biases ``b`` are global: they travel as the model's
arrays and are aggregated like an adapter. A user's embedding ``p_u`` is the client's
own: it is trained and kept where the user's data is, and never sent.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .item_tables import ITEM_BIASES, ITEM_EMBEDDINGS

INIT_SCALE = 0.1


class MatrixFactorization(nn.Module):
    """User and item embeddings (``nn.Embedding``, so Opacus computes per-sample
    gradients of each row) and item biases.
    """

    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        self.item_biases = nn.Embedding(num_items, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of shape ``items.shape``: user ``users[b]`` against items ``items[b, ...]``."""
        user = self.users(users)
        item = self.items(items)
        flat = item.reshape(len(users), -1, item.shape[-1])
        scores = torch.einsum("bkd,bd->bk", flat, user).reshape(items.shape)
        return scores + self.item_biases(items).squeeze(-1)

    def item_arrays(self) -> dict[str, np.ndarray]:
        """The global part: item embeddings and biases (float32 copies)."""
        return {
            ITEM_EMBEDDINGS: self.items.weight.detach().numpy().copy(),
            ITEM_BIASES: self.item_biases.weight.detach().numpy()[:, 0].copy(),
        }

    def load_item_arrays(self, arrays: dict[str, np.ndarray], source: str) -> None:
        """Put the global part back; ``source`` names it in the error of a mismatch."""
        expected = {ITEM_EMBEDDINGS: tuple(self.items.weight.shape), ITEM_BIASES: (self.items.num_embeddings,)}
        got = {name: tuple(np.shape(values)) for name, values in arrays.items()}
        if got != expected:
            raise ValueError(f"{source}: arrays {got}, expected {expected} (same catalog and mf-dim on every node?)")
        with torch.no_grad():
            self.items.weight.copy_(torch.as_tensor(np.asarray(arrays[ITEM_EMBEDDINGS], dtype=np.float32)))
            self.item_biases.weight.copy_(torch.as_tensor(np.asarray(arrays[ITEM_BIASES], dtype=np.float32))[:, None])

    def set_users(self, embeddings: np.ndarray) -> None:
        """Replace the user embeddings (rows in the model's user order)."""
        with torch.no_grad():
            self.users.weight.copy_(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)))

    def user_array(self) -> np.ndarray:
        """The user embeddings (a float32 copy)."""
        return self.users.weight.detach().numpy().copy()


def initial_item_arrays(num_items: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """The seeded starting point of the global part: N(0, 0.1^2) embeddings, zero biases."""
    rng = np.random.default_rng(seed)
    return {
        ITEM_EMBEDDINGS: (rng.standard_normal((num_items, dim)) * INIT_SCALE).astype(np.float32),
        ITEM_BIASES: np.zeros(num_items, dtype=np.float32),
    }


def initial_user_embeddings(num_users: int, dim: int, seed: int) -> np.ndarray:
    """A client's seeded starting user embeddings, N(0, 0.1^2)."""
    return (np.random.default_rng(seed).standard_normal((num_users, dim)) * INIT_SCALE).astype(np.float32)
