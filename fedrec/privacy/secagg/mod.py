"""Client half of SecAgg+: a Flower mod around the ClientApp's ``@app.train``.

The server drives the stages with train messages that carry a ``secagg`` record
(:mod:`fedrec.protocol.secagg`); messages without it pass straight to the app. The
node's keys, self-mask seed and the shares it holds live in ``context.state`` between
stages (one record for the current round, one for the next).

1. ``setup``: make two X25519 key pairs (channel, and mask, derived from a seed) and a
   self-mask seed; reply the public keys.
2. ``share-keys``: Shamir-share the self-mask seed and the mask-key seed among the
   neighbourhood; reply each neighbour's shares encrypted for it.
3. ``collect-masked``: keep the shares addressed to this node, run the app's train
   handler on the global adapter, and reply the masked, quantized, weighted update
   ``local - global`` with the secure metrics (e.g. the training loss) appended; of the
   other metrics only :data:`~fedrec.protocol.secagg.CLEAR_METRICS` stay in the clear
   (the example count is the masked weight), plus the public keys of fresh key
   pairs (and a fresh seed) for the next round. A declining app sends a zero update of
   weight 0, so the protocol still completes.
4. ``unmask``: only after this node's masked input, reply the self-mask seed shares of
   survivors and the mask-key shares of dropped nodes, never both for one node. When
   the message also carries the next round's neighbourhood (the server expects to
   sample the same nodes again), share the next round's secrets in the same reply: a
   node sampled again skips ``setup`` (it advertised keys) and, when the sample is the
   one shared for, ``share-keys``. Keys are never reused across rounds; a sample that
   differs from the shared-for one re-shares the same secrets with a fresh Shamir
   sharing (independent polynomials), and a node answers ``unmask`` only with the
   shares of the sharing it masked with.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

from ...protocol.records import ARRAYS, METRICS, SECAGG_CLIPPED
from ...protocol.replies import reply_metrics
from ...protocol.secagg import (
    CLEAR_METRICS,
    MASKED_RECORD,
    SECAGG_RECORD,
    SECURE_METRICS_KEY,
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    WEIGHT_KEY,
    CollectReply,
    CollectRequest,
    EncryptedShares,
    Neighbourhood,
    PublicKeys,
    SetupReply,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from .crypto import (
    SecAggError,
    agreed_key,
    channel_key,
    mask_private_key,
    new_private_key,
    new_seed,
    public_key,
    share_secret,
)
from .quantization import mask_update, quantize_update, rounding_key, split_flat

STATE_KEY = "secagg-state"  # the current round's keys, seed and shares
NEXT_STATE_KEY = "secagg-next-state"  # the next round's, made with this round's masked input


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the SecAgg+ stage a message asks for; pass other messages to the app."""
    if msg.metadata.message_type != MessageType.TRAIN or SECAGG_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    record = msg.content.config_records[SECAGG_RECORD]
    stage, server_round, node_id = str(record["stage"]), int(record["round"]), msg.metadata.dst_node_id
    if stage == STAGE_SETUP:
        context.state.config_records.pop(NEXT_STATE_KEY, None)
        context.state[STATE_KEY] = _new_round_state(server_round)
        return _reply(msg, SetupReply(_public_keys(context.state[STATE_KEY])).to_record())
    state = _round_state(context, server_round)
    if state is None:
        raise SecAggError(f"stage {stage} of round {server_round} without this round's setup")
    if stage == STAGE_SHARE_KEYS:
        hood = ShareKeysRequest.from_record(record).hood
        return _reply(msg, ShareKeysReply(_share_keys(state, hood, node_id)).to_record())
    if stage == STAGE_COLLECT:
        return _collect_masked(msg, context, call_next, state, CollectRequest.from_record(record))
    if stage == STAGE_UNMASK:
        return _reply(msg, _unmask(context, state, UnmaskRequest.from_record(record), node_id).to_record())
    raise SecAggError(f"unknown secure-aggregation stage {stage!r}")


def _reply(msg: Message, record: ConfigRecord) -> Message:
    return Message(content=RecordDict({SECAGG_RECORD: record}), reply_to=msg)


def _new_round_state(server_round: int) -> ConfigRecord:
    """Fresh key pairs and self-mask seed for ``server_round`` (the mask key from a seed,
    which is what the node shares).
    """
    mask_seed = new_seed()
    return ConfigRecord(
        {
            "round": server_round,
            "channel-sk": new_private_key(),
            "mask-seed": mask_seed,
            "mask-sk": mask_private_key(mask_seed),
            "seed": new_seed(),
        }
    )


def _public_keys(state: ConfigRecord) -> PublicKeys:
    return PublicKeys(public_key(state["channel-sk"]), public_key(state["mask-sk"]))


def _round_state(context: Context, server_round: int) -> ConfigRecord | None:
    """The state of ``server_round``: the current record, or the next one, which then
    becomes current. None when the node holds no keys for that round.
    """
    records = context.state.config_records
    for key in (STATE_KEY, NEXT_STATE_KEY):
        state = records.get(key)
        if state is not None and state["round"] == server_round:
            if key == NEXT_STATE_KEY:
                context.state[STATE_KEY] = records.pop(NEXT_STATE_KEY)
            return state
    return None


def _share_keys(state: ConfigRecord, hood: Neighbourhood, node_id: int) -> EncryptedShares:
    """Shamir-share the state's self-mask seed and mask-key seed among ``hood`` (a fresh
    sharing, replacing any earlier one); each neighbour's shares encrypted for it. The
    channel keys are kept to decrypt the neighbours' shares.
    """
    if node_id not in hood.nodes:
        raise SecAggError(f"node {node_id}: malformed neighbourhood {hood.nodes}")
    own = hood.nodes.index(node_id)
    if hood.channel_pks[own] != public_key(state["channel-sk"]) or hood.mask_pks[own] != public_key(state["mask-sk"]):
        raise SecAggError(f"node {node_id}: the server relayed public keys that are not this node's")
    seed_shares = share_secret(state["seed"], hood.threshold, len(hood.nodes))
    key_shares = share_secret(state["mask-seed"], hood.threshold, len(hood.nodes))
    channel_keys = [
        b"" if peer == node_id else channel_key(state["channel-sk"], pk)
        for peer, pk in zip(hood.nodes, hood.channel_pks, strict=True)
    ]
    state["peers"], state["peer-channel-keys"], state["peer-mask-pks"] = hood.nodes, channel_keys, hood.mask_pks
    state["share-srcs"], state["seed-shares"], state["key-shares"] = [node_id], [seed_shares[own]], [key_shares[own]]
    others = [i for i, peer in enumerate(hood.nodes) if peer != node_id]
    return EncryptedShares(
        [hood.nodes[i] for i in others],
        [
            encrypt(channel_keys[i], share_keys_plaintext_concat(node_id, hood.nodes[i], seed_shares[i], key_shares[i]))
            for i in others
        ],
    )


def _keep_shares(state: ConfigRecord, request: CollectRequest, node_id: int) -> None:
    """Decrypt and keep the shares the neighbours sent this node."""
    peers = [int(n) for n in state["peers"]]
    srcs, seed_shares, key_shares = list(state["share-srcs"]), list(state["seed-shares"]), list(state["key-shares"])
    for src, ciphertext in zip(request.srcs, request.ciphertexts, strict=True):
        if src not in peers or src == node_id:
            raise SecAggError(f"node {node_id}: shares from {src}, which is not a neighbour")
        plaintext = decrypt(state["peer-channel-keys"][peers.index(src)], ciphertext)
        actual_src, dst, seed_share, key_share = share_keys_plaintext_separate(plaintext)
        if (actual_src, dst) != (src, node_id):
            raise SecAggError(f"node {node_id}: a share relayed from {src} was made by {actual_src} for {dst}")
        srcs.append(src)
        seed_shares.append(seed_share)
        key_shares.append(key_share)
    state["share-srcs"], state["seed-shares"], state["key-shares"] = srcs, seed_shares, key_shares


def _collect_masked(
    msg: Message, context: Context, call_next: ClientAppCallable, state: ConfigRecord, request: CollectRequest
) -> Message:
    """Train through the app, then reply its masked, quantized, weighted update."""
    node_id = msg.metadata.dst_node_id
    _keep_shares(state, request, node_id)
    del msg.content.config_records[SECAGG_RECORD]
    global_arrays = msg.content.array_records[ARRAYS]
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    trained = reply.content.array_records.get(ARRAYS)
    metrics = reply_metrics(reply)
    names = list(global_arrays.keys())
    secure = request.masking.secure_metrics
    if trained is None:  # the app declined: a zero update of weight 0 keeps the protocol whole
        values = base = [np.zeros(global_arrays[n].shape) for n in names]
        weight = 0.0
    else:
        if [(n, tuple(trained[n].shape)) for n in trained] != [(n, tuple(global_arrays[n].shape)) for n in names]:
            raise SecAggError(f"node {node_id}: the trained adapter's tensors differ from the global adapter's")
        values = [trained[n].numpy() for n in names]
        base = [global_arrays[n].numpy() for n in names]
        weight = float(metrics[request.masking.weight_key])
    if secure:  # masked with the update, weighted like it: the server learns only their weighted mean
        values = [*values, np.array([float(metrics.get(k, 0.0)) if weight else 0.0 for k in secure])]
        base = [*base, np.zeros(len(secure))]
    update = quantize_update(values, base, weight, request.masking, rounding_key(values, weight))
    peers = [int(n) for n in state["peers"]]
    pair_seeds = {
        src: agreed_key(state["mask-sk"], state["peer-mask-pks"][peers.index(src)])
        for src in state["share-srcs"]
        if src != node_id
    }
    mask_update(update.flat, state["seed"], pair_seeds, node_id, request.masking.modulus_range)
    shapes = [(1,), *(tuple(global_arrays[n].shape) for n in names), *([(len(secure),)] if secure else [])]
    masked = split_flat(update.flat, shapes)
    state["masked"] = True
    context.state[NEXT_STATE_KEY] = upcoming = _new_round_state(request.round + 1)
    masked_names = [WEIGHT_KEY, *names, *([SECURE_METRICS_KEY] if secure else [])]
    clear = {k: v for k, v in metrics.items() if k in CLEAR_METRICS}
    content = RecordDict(
        {
            MASKED_RECORD: ArrayRecord({name: Array(v) for name, v in zip(masked_names, masked, strict=True)}),
            METRICS: MetricRecord({**clear, SECAGG_CLIPPED: update.clipped}),
            SECAGG_RECORD: CollectReply(_public_keys(upcoming)).to_record(),
        }
    )
    for name, record in reply.content.config_records.items():
        content[name] = record
    return Message(content=content, reply_to=msg)


def _unmask(context: Context, state: ConfigRecord, request: UnmaskRequest, node_id: int) -> UnmaskReply:
    """The shares the server asks for, and this node's next-round shares when asked."""
    if not state.get("masked", False):
        raise SecAggError(f"node {node_id}: asked to unmask a round it sent no masked input in")
    active, dead = set(request.active), set(request.dead)
    if active & dead:
        raise SecAggError(f"nodes {sorted(active & dead)} are listed as both alive and dropped")
    owners = list(zip(state["share-srcs"], state["seed-shares"], state["key-shares"], strict=True))
    seeds = [(src, seed_share) for src, seed_share, _ in owners if src in active]
    keys = [(src, key_share) for src, _, key_share in owners if src in dead]
    upcoming = context.state.config_records.get(NEXT_STATE_KEY)
    next_shares = None
    if request.next_hood is not None and upcoming is not None and upcoming["round"] == request.round + 1:
        next_shares = _share_keys(upcoming, request.next_hood, node_id)
    return UnmaskReply(
        [n for n, _ in seeds], [s for _, s in seeds], [n for n, _ in keys], [s for _, s in keys], next_shares
    )
