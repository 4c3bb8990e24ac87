"""Client half of client-level DP: a Flower mod that clips the trained adapter's update
(and adds this client's noise share) when the train config asks for it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from ...protocol.records import (
    ARRAYS,
    CLIENT_DP_CLIP,
    CLIENT_DP_NOISE_STD,
    CLIENT_DP_WEIGHT,
    CONFIG,
    METRICS,
    UPDATE_NORM,
)
from .mechanism import clip_update


def client_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the trained adapter's update (and add this client's noise share) when the
    train config carries a clipping bound; other messages pass unchanged.
    """
    config = msg.content.config_records.get(CONFIG)
    if msg.metadata.message_type != MessageType.TRAIN or config is None or CLIENT_DP_CLIP not in config:
        return call_next(msg, context)
    clip, noise_std = float(config[CLIENT_DP_CLIP]), float(config.get(CLIENT_DP_NOISE_STD, 0.0))
    if clip <= 0 or noise_std < 0:
        raise ValueError(f"client-level DP needs clip > 0 and noise std >= 0, got {clip} and {noise_std}")
    global_arrays = msg.content.array_records[ARRAYS]
    reply = call_next(msg, context)
    trained = reply.content.array_records.get(ARRAYS) if not reply.has_error() else None
    if trained is None:  # an error or a declined round: nothing released
        return reply
    if list(trained.keys()) != list(global_arrays.keys()):
        raise ValueError("the trained adapter's tensors differ from the global adapter's")
    start = [global_arrays[n].numpy().astype(np.float64) for n in trained]
    deltas, norm = clip_update(
        [trained[n].numpy().astype(np.float64) - s for n, s in zip(trained, start, strict=True)], clip
    )
    rng = np.random.default_rng()  # OS entropy: the noise must not be reproducible by anyone
    released = {
        name: Array((s + d + rng.normal(0.0, noise_std, d.shape)).astype(trained[name].numpy().dtype))
        for name, s, d in zip(trained, start, deltas, strict=True)
    }
    reply.content[ARRAYS] = ArrayRecord(released)
    metrics = reply.content.metric_records[METRICS]
    reply.content[METRICS] = MetricRecord({**dict(metrics), UPDATE_NORM: norm, CLIENT_DP_WEIGHT: 1})
    return reply
