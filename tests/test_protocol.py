"""The typed wire protocol: SecAgg+ stage records round-trip, keep the record layout the
clients and the server agreed on before (so no byte changes), refuse malformed records,
and the decline reply is written and read in one place.
"""

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedrec.protocol.records import DECLINE, METRICS, NUM_EXAMPLES
from fedrec.protocol.replies import (
    REASON_LENGTH,
    decline_reason,
    decline_reply,
    is_declined,
    readable_reason,
    reply_metrics,
)
from fedrec.protocol.secagg import (
    STAGE_COLLECT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    CollectReply,
    CollectRequest,
    EncryptedShares,
    MaskingParameters,
    Neighbourhood,
    ProtocolError,
    PublicKeys,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    stage_of,
)

MASKING = MaskingParameters(4.0, 1 << 22, 1 << 32, 10_000.0, "num-examples")
HOOD = Neighbourhood([3, 7, 9], [b"c3", b"c7", b"c9"], [b"m3", b"m7", b"m9"], 2)
KEYS = PublicKeys(b"channel", b"mask")

STAGES = [
    SetupRequest(4),
    SetupReply(KEYS),
    ShareKeysRequest(4, HOOD),
    ShareKeysReply(EncryptedShares([7, 9], [b"x7", b"x9"])),
    CollectRequest(4, [7, 9], [b"x7", b"x9"], MASKING),
    CollectRequest(4, [], [], MASKING),
    CollectReply(KEYS),
    UnmaskRequest(4, [3, 7], [9]),
    UnmaskRequest(4, [3, 7, 9], [], HOOD),
    UnmaskReply([3, 7], [b"s3", b"s7"], [9], [b"k9"]),
    UnmaskReply([3], [b"s3"], [], [], EncryptedShares([7], [b"n7"])),
    UnmaskReply([3], [b"s3"], [], [], EncryptedShares()),
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: type(s).__name__)
def test_stage_records_round_trip(stage):
    record = stage.to_record()
    assert type(stage).from_record(record) == stage
    assert stage_of(RecordDict({"secagg": record})) == record["stage"]


def test_records_keep_the_agreed_layout():
    """The keys each stage carries, in order (what a peer of an earlier version reads)."""
    collect = ["clipping-range", "quantization-range", "modulus-range", "max-weight", "weight-key"]
    next_hood = ["next-nodes", "next-channel-pks", "next-mask-pks", "next-threshold"]
    shares = ["seed-nodes", "seed-shares", "key-nodes", "key-shares"]
    layouts = [
        (SetupRequest(1), ["stage", "round"]),
        (SetupReply(KEYS), ["stage", "channel-pk", "mask-pk"]),
        (ShareKeysRequest(1, HOOD), ["stage", "round", "nodes", "channel-pks", "mask-pks", "threshold"]),
        (CollectRequest(1, [7], [b"x"], MASKING), ["stage", "round", "srcs", "ciphertexts", *collect]),
        (CollectReply(KEYS), ["stage", "next-channel-pk", "next-mask-pk"]),
        (UnmaskRequest(1, [3], [9], HOOD), ["stage", "round", "active", "dead", *next_hood]),
        (
            UnmaskReply([3], [b"s"], [9], [b"k"], EncryptedShares([7], [b"n"])),
            ["stage", *shares, "next-shared", "next-dst", "next-ciphertexts"],
        ),
    ]
    for stage, keys in layouts:
        assert list(stage.to_record().keys()) == keys, type(stage).__name__
    stages = [(SetupRequest(1), STAGE_SETUP), (ShareKeysReply(EncryptedShares()), STAGE_SHARE_KEYS)]
    stages += [(CollectReply(KEYS), STAGE_COLLECT), (UnmaskRequest(1, [], []), STAGE_UNMASK)]
    assert all(stage.to_record()["stage"] == name for stage, name in stages)
    assert "srcs" not in CollectRequest(1, [], [], MASKING).to_record()  # Flower cannot size empty lists


def test_malformed_records_are_refused():
    record = ShareKeysRequest(1, HOOD).to_record()
    record["mask-pks"] = [b"m3"]
    with pytest.raises(ProtocolError, match="malformed neighbourhood"):
        ShareKeysRequest.from_record(record)
    record = ShareKeysRequest(1, HOOD).to_record()
    record["nodes"] = [3, 3, 9]
    with pytest.raises(ProtocolError, match="malformed neighbourhood"):
        ShareKeysRequest.from_record(record)
    record = UnmaskReply([3, 7], [b"s3", b"s7"], [], []).to_record()
    record["seed-nodes"] = [3]
    with pytest.raises(ProtocolError, match="different lengths"):
        UnmaskReply.from_record(record)
    record = CollectRequest(1, [7, 9], [b"x7", b"x9"], MASKING).to_record()
    del record["weight-key"]
    with pytest.raises(KeyError):
        CollectRequest.from_record(record)
    assert CollectReply.from_record(ConfigRecord({"stage": STAGE_COLLECT})) is None  # no keys advertised


def test_a_decline_is_written_and_read_in_one_place(task_identity):
    request = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    reply = decline_reply(request, "privacy budget spent", {"epsilon": 7.9})
    assert is_declined(reply) and decline_reason(reply) == "privacy budget spent"
    assert reply_metrics(reply) == {NUM_EXAMPLES: 0, "declined": 1, "epsilon": 7.9}
    assert set(reply.content.keys()) == {METRICS, DECLINE}
    trained = Message(RecordDict({METRICS: reply.content[METRICS]}), reply_to=request)
    trained.content[METRICS]["declined"] = 0
    assert not is_declined(trained) and decline_reason(trained) == "no reason given"


RAY_TRACEBACK = (
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=4242, ip=127.0.0.1)\n"
    "Traceback (most recent call last):\n"
    '  File "/site-packages/flwr/clientapp/client_app.py", line 144, in __call__\n'
    "    return self._call(message, context)\n"
    * 30
    + "\x1b[31mfedrec.data.interactions.DataError: /data/missing.csv does not exist\x1b[0m\n\n"
)


def test_a_failure_reason_is_one_readable_line():
    assert readable_reason(RAY_TRACEBACK) == "fedrec.data.interactions.DataError: /data/missing.csv does not exist"
    assert readable_reason("collect-masked: the masked input tensors differ") == (
        "collect-masked: the masked input tensors differ"
    )
    long = readable_reason("x" * 5000)
    assert len(long) == REASON_LENGTH and long.endswith("…")
    assert readable_reason(" \n\x1b[0m\n") == "no reason given"
