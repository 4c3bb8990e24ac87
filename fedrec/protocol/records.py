"""Names of the records, config keys and metric keys in fedrec's messages."""

# Records of a message's RecordDict.
ARRAYS = "arrays"  # ArrayRecord: the adapter (down: global; up: trained)
METRICS = "metrics"  # MetricRecord of a reply
CONFIG = "config"  # ConfigRecord of a train/evaluate request (Flower's strategies name it so)
DECLINE = "decline"  # ConfigRecord of a declined training reply: its reason

# Keys of the request's config record.
SERVER_ROUND = "server-round"  # set by Flower's strategies
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
BACKBONE = "backbone"
BACKBONE_FINGERPRINT = "backbone-fingerprint"
LORA_A_FINGERPRINT = "lora-a-fingerprint"  # hash of the frozen A's first rows, when A does not travel
LORA_A_ROWS = "lora-a-rows"
CLIENT_DP_CLIP = "client-dp-clip"  # the L2 bound on the update (client-level DP)
CLIENT_DP_NOISE_STD = "client-dp-noise-std"  # this client's share of the noise (0: central)
TASK = "task"  # what a train request asks for when it is not a training round
ITEM_STATISTICS = "item-statistics"  # TASK: the node's item rating and like counts
ITEM_COOCCURRENCE = "item-cooccurrence"  # TASK: the node's summed co-occurrence of ratings (recommender 'ease')
STATISTICS_CLIENTS = "statistics-clients"  # the number of nodes asked (each adds its share of noise)

# Arrays of an item-statistics reply (counts in thousands; see fedrec.privacy.item_statistics).
ITEM_RATINGS = "stats.ratings"
ITEM_LIKES = "stats.likes"
COOCCURRENCE = "stats.cooccurrence"  # the upper triangle of the items x items sum, in thousands

# Keys of a reply's metric record.
NUM_EXAMPLES = "num-examples"  # FedAvg's weight
DECLINED = "declined"  # 1: the client declined the round (with a DECLINE record)
TRAIN_LOSS = "train_loss"
STEPS = "steps"
SECONDS = "seconds"
LORA_RANK = "lora-rank"
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise_multiplier"
SAMPLE_RATE = "sample_rate"
LEDGER = "ledger"  # the node's record-level privacy ledger after this reply: (noise, rate, steps) per release, flat
UPDATE_NORM = "update-norm"  # the update's L2 norm before client-level clipping
CLIENT_DP_WEIGHT = "client-dp-weight"  # 1: the uniform weight of a client-level DP mean
SECAGG_CLIPPED = "secagg-clipped"  # update values clipped to clipping-range before masking
AUC = "auc"
LOSS = "loss"
POS_HIST = "pos-hist"  # score histogram of positive held-out examples (federated AUC)
NEG_HIST = "neg-hist"

REASON = "reason"  # key of the DECLINE record
