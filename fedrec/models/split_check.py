"""The scorer's self-check at construction: on a padded batch the split forward must
reproduce the model's own forward (else the architecture is refused), and the
last-position top layer is used only where it does.

A passed check is remembered in ``split-checks.json`` of the cache folder (see
:func:`~.backbone.cache_root`), keyed by everything its outcome depends on: the weights'
fingerprint, the check's token ids (tokenizer, template, question), the LoRA and scorer
settings, the versions of torch, transformers and peft, and the source of this package.
A process that builds the same scorer again (a deployed node runs each message in a
fresh process; ``fedrec recommend``) skips its two forwards per prompt (about 1.8 s for
SmolLM2 on a 2-core CPU). A refused architecture is never remembered.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import peft
import torch
import transformers

from ..files import write_atomic
from .backbone import cache_root
from .errors import BackboneError
from .prefix_cache import PREFIX_CACHE

if TYPE_CHECKING:
    from .scorer import Scorer

CHECK_TEXTS = ["One two three, four five six. Seven eight nine ten?", "Eleven twelve. Thirteen fourteen?"]
CHECKS_FILE = "split-checks.json"
KEPT_CHECKS = 64  # the newest outcomes kept in the file


def check_split(scorer: Scorer, settings: str) -> None:
    """Verify the split forward of ``scorer``, built with ``settings`` (the LoRA and
    scorer settings as text), unless the same check passed before (see the module docstring).
    """
    token_lists = scorer.encode(CHECK_TEXTS)
    key = check_key(scorer, token_lists, settings)
    path = cache_root() / CHECKS_FILE
    known = remembered_checks(path).get(key)
    if isinstance(known, bool):
        scorer.split.last_position_top_layer = scorer.split.last_position_top_layer and known
        return
    if scorer.split.last_position_top_layer and split_error(scorer, token_lists) is not None:
        scorer.split.last_position_top_layer = False
    error = split_error(scorer, token_lists)
    if error is not None:
        raise BackboneError(
            f"{scorer.backbone_name}: the split at layer {scorer.split_layer} does not reproduce the "
            f"model's forward ({error}); this architecture is not supported"
        )
    remember_check(path, key, scorer.split.last_position_top_layer)


def check_key(scorer: Scorer, token_lists: list[list[int]], settings: str) -> str:
    """A digest of everything the check's outcome depends on."""
    parts = [
        scorer.fingerprint,
        json.dumps(token_lists),
        settings,
        str(scorer.split_layer),
        scorer.kind.name,
        str(scorer.compute_dtype),
        f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}",
        package_source_digest(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@functools.cache
def package_source_digest() -> str:
    """SHA-256 of this package's source files (the split, heads and kinds the check tests)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def remembered_checks(path: Path) -> dict[str, object]:
    """The outcomes in ``path`` (key -> last-position top layer usable); empty when the
    file is missing or unreadable (the checks then run again and rewrite it).
    """
    try:
        checks = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return checks if isinstance(checks, dict) else {}


def remember_check(path: Path, key: str, last_position_top_layer: bool) -> None:
    """Add an outcome to ``path``, keeping the newest :data:`KEPT_CHECKS`; a cache folder
    that cannot be written only means the check runs again next time.
    """
    checks = remembered_checks(path)
    checks.pop(key, None)
    checks[key] = last_position_top_layer
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(dict(list(checks.items())[-KEPT_CHECKS:]), indent=0))
    except OSError:
        pass


def split_error(scorer: Scorer, token_lists: list[list[int]]) -> str | None:
    """How the split scores of ``token_lists`` differ from the full forward's, or None."""
    try:
        with scorer.in_float32():
            split = scorer.score(token_lists, batch_size=len(token_lists)).tolist()
            full = [full_forward_score(scorer, tokens) for tokens in token_lists]
    except (RuntimeError, TypeError, AttributeError) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        for tokens in token_lists:
            PREFIX_CACHE.drop(scorer.cache_key(tokens))
    for s, f in zip(split, full, strict=True):
        if abs(s - f) > 1e-3 * max(1.0, abs(f)):
            return f"{s:.5f} vs {f:.5f}"
    return None


@torch.no_grad()
def full_forward_score(scorer: Scorer, tokens: list[int]) -> float:
    """Score one prompt with the model's own unsplit forward (for checks), under the
    same autocast as the scorer's other paths.
    """
    ids = torch.tensor([tokens], device=next(scorer.peft.parameters()).device)
    if scorer.kind.name != "causal":
        return scorer.head.full_forward(scorer.split, ids)
    with scorer.autocast():
        return scorer.head.full_forward(scorer.split, ids)
