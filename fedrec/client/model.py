"""The node's copy of the global model: the process's scorer, checked against the
server's backbone and frozen LoRA A, holding the adapter the message carries.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message

from ..config import FedRecConfig
from ..models.adapter import frozen_a_fingerprint, load_adapter_arrays
from ..models.scorer import Scorer
from ..protocol.records import ARRAYS, BACKBONE_FINGERPRINT, CONFIG, LORA_A_FINGERPRINT, LORA_A_ROWS
from ..tasks.preference.scoring import scorer_for


def check_backbone(config: ConfigRecord, scorer: Scorer) -> None:
    """Refuse a message from a server with another backbone or another frozen A."""
    expected = config.get(BACKBONE_FINGERPRINT)
    if expected is not None and expected != scorer.fingerprint:
        raise ValueError(
            f"backbone mismatch: the server's {expected}, this node's {scorer.fingerprint} ({scorer.backbone_name})"
        )
    frozen_a = config.get(LORA_A_FINGERPRINT)
    if frozen_a is not None and frozen_a != frozen_a_fingerprint(scorer, int(config[LORA_A_ROWS])):
        raise ValueError(
            "the frozen LoRA A differs from the server's (seed, rank or random generator differ): "
            "FFA-LoRA needs the same A on every node"
        )


def global_model(cfg: FedRecConfig, message: Message, rank: int | None = None) -> Scorer:
    """The scorer at ``rank`` (default: the global rank) holding the message's global
    adapter (sliced to ``rank`` when clients have heterogeneous ranks).
    """
    scorer = scorer_for(cfg, rank)
    check_backbone(message.content.config_records[CONFIG], scorer)
    sliced = rank if rank is not None and cfg.model.client_lora_ranks else None
    load_adapter_arrays(scorer, message.content.array_records[ARRAYS], "global adapter", sliced)
    return scorer
