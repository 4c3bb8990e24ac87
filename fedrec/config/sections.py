"""The config sections, one per subsystem. Each key's default and help are declared
here once; ``fedrec config --explain`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .choices import (
    ACCOUNTANTS,
    CLIENT_DP_NOISE,
    CLIENT_SAMPLING,
    COMPUTE_DTYPES,
    EVAL_SPLITS,
    ITEM_TEXTS,
    LLM_INPUTS,
    LLM_OBJECTIVES,
    PARTITIONERS,
    RECOMMENDERS,
    STRATEGIES,
)
from .options import FRACTION, NON_NEGATIVE, POSITIVE, SHARE, ConfigError, Section, option


@dataclass(frozen=True)
class FederationConfig(Section):
    """Rounds, clients, their sampling and resources."""

    title = "federation"
    num_server_rounds: int = option(
        3, "rounds of federated training (0 for recommender = 'ease', fitted before round 1)", check=NON_NEGATIVE
    )
    num_clients: int = option(
        4, "clients (simulated SuperNodes), each holding a disjoint group of users", check=POSITIVE
    )
    fraction_train: float = option(1.0, "share of the clients sampled to train each round", check=SHARE)
    client_sampling: str = option(
        "fixed",
        "fixed: fraction-train x clients drawn without replacement (Flower's); poisson: each client "
        "independently with probability fraction-train (client-level DP then accounts the amplification)",
        choices=CLIENT_SAMPLING,
    )
    fraction_evaluate: float = option(
        0.0,
        "share of the clients sampled for federated evaluation each round (0: central evaluation only)",
        check=FRACTION,
    )
    round_timeout: float = option(3600.0, "seconds a round waits for the training replies", check=POSITIVE)
    client_cpus: float = option(
        2.0, "CPUs per simulated client (Ray; Flower counts whole CPUs: a fraction is rounded up)", check=POSITIVE
    )
    client_gpus: float = option(0.0, "GPU fraction per simulated client (Ray); 0: CPU only", check=NON_NEGATIVE)
    seed: int = option(
        42, "seed of the split, the partitions, the initial adapter, node sampling and training", check=NON_NEGATIVE
    )


@dataclass(frozen=True)
class AggregationConfig(Section):
    """The server's strategy and its optimizer (see ``fedrec.strategies``)."""

    title = "aggregation"
    strategy: str = option("fedavg", "aggregation strategy", choices=STRATEGIES)
    server_learning_rate: float = option(
        0.0,
        "server learning rate; 0: the strategy's default (FedAdam 0.1, FedYogi 0.01, FedAvgM 1.0)",
        check=NON_NEGATIVE,
    )
    server_momentum: float = option(0.9, "FedAvgM: server momentum", check=NON_NEGATIVE)
    server_beta1: float = option(0.9, "FedAdam, FedYogi: first-moment decay", check=FRACTION)
    server_beta2: float = option(0.99, "FedAdam, FedYogi: second-moment decay", check=FRACTION)
    server_tau: float = option(1e-3, "FedAdam, FedYogi: adaptivity", check=POSITIVE)
    proximal_mu: float = option(0.01, "FedProx: weight of the proximal term", check=NON_NEGATIVE)


@dataclass(frozen=True)
class DataConfig(Section):
    """The dataset, its per-user split and the clients' user groups."""

    title = "data"
    dataset: str = option(
        "ml-100k", "'ml-100k' (bundled), a folder (RecBole atomic files or ML-1M), a CSV/TSV/Parquet file, or hf:<id>"
    )
    items_path: str = option("", "item table (item,title[,genres]) of a CSV/TSV/Parquet dataset")
    item_text: str = option(
        "title", "what a prompt names an item by: its title, or its title and its genres", choices=ITEM_TEXTS
    )
    max_users: int = option(0, "users drawn (seeded) from the dataset; 0: all", check=NON_NEGATIVE)
    like_threshold: float = option(3.0, "a rating above it is a like (label 1)")
    history_length: int = option(10, "rated items in a prompt's history", check=POSITIVE)
    test_interactions: int = option(1, "each user's latest interactions held out for testing", check=POSITIVE)
    validation_interactions: int = option(
        0, "each user's interactions before the test ones held out for validation (0: none)", check=NON_NEGATIVE
    )
    train_examples_per_user: int = option(
        0, "each user's most recent training examples kept; 0: all", check=NON_NEGATIVE
    )
    targets_per_history: int = option(
        1, "m > 1: blocks of m training targets share one history (and its prefix)", check=POSITIVE
    )
    partitioner: str = option(
        "iid",
        "users to clients: one client per user, IID groups, or groups skewed by a Dirichlet over like-rate quartiles",
        choices=PARTITIONERS,
    )
    skew_alpha: float = option(
        0.5, "Dirichlet concentration of the skewed partitioner (smaller: more skewed)", check=NON_NEGATIVE
    )


@dataclass(frozen=True)
class EvaluationConfig(Section):
    """Central evaluation of the global adapter on held-out users."""

    title = "evaluation"
    central_eval: bool = option(True, "evaluate the global adapter on the server after every round")
    eval_split: str = option(
        "test", "the held-out part evaluated: choose settings on validation, report test", choices=EVAL_SPLITS
    )
    eval_users: int = option(300, "users (seeded) whose held-out interactions are scored; 0: all", check=NON_NEGATIVE)
    ranking_users: int = option(
        0,
        "evaluation users with a liked held-out item ranked for HR@10/NDCG@10 at rounds 0 and last (0: off)",
        check=NON_NEGATIVE,
    )
    ranking_negatives: int = option(99, "unrated items sampled per ranking user (fixed seed)", check=POSITIVE)
    rerank_top: int = option(
        0,
        "ranking by retrieve-then-rerank: item-tables' MF (users folded in) orders the candidates and the whole "
        "catalog, the LLM reranks its top N (0: the LLM scores every sampled candidate, no catalog metrics)",
        check=NON_NEGATIVE,
    )
    rerank_fusion_weight: float = option(
        0.0,
        "late fusion in retrieve-then-rerank: the top N ordered by the LLM's score plus this weight times the "
        "retriever's, each standardized over the N (0: the LLM's order alone); choose it on validation",
        check=NON_NEGATIVE,
    )
    eval_prefix_store: str = option(
        "",
        "folder keeping the central evaluation's frozen-prefix states between runs (one file per prompt set, "
        "named by the backbone, split layer, dtype and tokens): runs on the same split and backbone, such as a "
        "suite's points, compute them once; empty: kept in memory for the run only",
    )


@dataclass(frozen=True)
class ModelConfig(Section):
    """The frozen backbone and its LoRA adapter."""

    title = "model"
    recommender: str = option(
        "llm",
        "the model trained: 'llm' (LoRA adapter of the frozen backbone), 'mf' (matrix factorization: item "
        "embeddings aggregated, each user's embedding kept on its client) or 'ease' (item-item weights fitted in "
        "closed form from the clients' summed, noised co-occurrence of ratings: one exchange, no training rounds)",
        choices=RECOMMENDERS,
    )
    llm_input: str = option(
        "text",
        "what the LLM reads: 'text' (the history's titles) or 'hybrid' (also collaborative soft tokens: the "
        "user's folded-in and the item's embedding from item-tables, projected by a trained projector)",
        choices=LLM_INPUTS,
    )
    backbone: str = option("smollm2", "smollm2, minilm, tiny-llama, tiny-bert, a local folder or a hub id")
    max_length: int = option(256, "prompt tokens; the oldest content is cut", check=POSITIVE)
    lora_rank: int = option(8, "LoRA rank", check=POSITIVE)
    lora_alpha: float = option(16.0, "LoRA scale numerator (scale = alpha / rank)", check=POSITIVE)
    lora_dropout: float = option(0.0, "LoRA dropout", check=NON_NEGATIVE)
    lora_target_modules: str = option("q_proj,v_proj", "comma-separated module names that get LoRA")
    lora_layers: int = option(
        0,
        "LoRA on the top N transformer layers (0: all); the layers below are computed once per prompt",
        check=NON_NEGATIVE,
    )
    lora_freeze_a: bool = option(False, "FFA-LoRA's frozen A under any strategy (strategy ffa-lora implies it)")
    lora_ranks: str = option(
        "", "heterogeneous ranks, e.g. '4,8,16': client i gets rank i mod 3 (lora-rank unused); needs a frozen A"
    )
    compute_dtype: str = option(
        "float32",
        "autocast precision of the forward pass (auto: bfloat16 where the hardware has it, else float32); "
        "the adapter stays float32",
        choices=COMPUTE_DTYPES,
    )

    def validate(self) -> None:
        """Target modules named, client ranks positive integers."""
        if not self.lora_modules:
            raise ConfigError("config key 'lora-target-modules' names no module")
        try:
            self.client_lora_ranks  # noqa: B018 (parses)
        except ValueError:
            raise ConfigError(f"config key 'lora-ranks' must list positive integers, got '{self.lora_ranks}'") from None

    @property
    def lora_modules(self) -> list[str]:
        """Target module names of LoRA, from the comma-separated key."""
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    @property
    def client_lora_ranks(self) -> list[int]:
        """Ranks assigned round-robin to clients (empty: every client has ``lora-rank``)."""
        ranks = [int(r) for r in self.lora_ranks.split(",") if r.strip()]
        if any(r <= 0 for r in ranks):
            raise ValueError(self.lora_ranks)
        return ranks

    @property
    def global_lora_rank(self) -> int:
        """Rank of the global adapter: the largest client rank, else ``lora-rank``."""
        return max(self.client_lora_ranks, default=self.lora_rank)

    def client_lora_rank(self, partition_id: int) -> int:
        """The LoRA rank of client ``partition_id``."""
        ranks = self.client_lora_ranks
        return ranks[partition_id % len(ranks)] if ranks else self.lora_rank


@dataclass(frozen=True)
class TrainingConfig(Section):
    """Each client's local optimisation in a round."""

    title = "training"
    local_epochs: int = option(1, "passes over the client's examples per round", check=POSITIVE)
    batch_size: int = option(
        16, "(expected) logical batch size; with DP, Poisson sampling rate = batch / N", check=POSITIVE
    )
    physical_batch_size: int = option(
        16, "examples per forward/backward pass (bounds memory; Opacus's BatchMemoryManager)", check=POSITIVE
    )
    learning_rate: float = option(5e-4, "AdamW learning rate", check=POSITIVE)
    objective: str = option(
        "preference",
        "what the LLM learns: 'preference' (like or not, binary cross-entropy on rated items) or 'ranking' "
        "(each liked training item against train-negatives unrated ones after the same history, softmax "
        "cross-entropy; DP-SGD clips per group: a record is a liked interaction with its negatives)",
        choices=LLM_OBJECTIVES,
    )
    train_negatives: int = option(
        4, "objective = 'ranking': unrated items (drawn once per run) per liked training item", check=POSITIVE
    )
    train_negatives_pool: int = option(
        0,
        "objective = 'ranking': draw the negatives from the top K of the user's unrated items by item-tables' MF "
        "(the user folded in on the node), the hard negatives a reranker of its top N meets (0: from all unrated)",
        check=NON_NEGATIVE,
    )


@dataclass(frozen=True)
class CollaborativeConfig(Section):
    """The matrix-factorization model (``recommender = 'mf'``): BPR on each client's likes."""

    title = "collaborative model"
    # The defaults were chosen under record-level DP at epsilon 8 on the validation split over
    # two seeds (benchmarks/mf_dp_sweep.py): more local steps, a higher rate and a smaller
    # embedding each beat the earlier 16 / 100 / 1 epoch; together +0.054 NDCG@10 there.
    mf_dim: int = option(8, "embedding dimension of users and items", check=POSITIVE)
    mf_learning_rate: float = option(
        200.0, "SGD learning rate of local BPR training (of the batch-mean gradient)", check=POSITIVE
    )
    mf_max_grad_norm: float = option(0.5, "DP-SGD: per-record gradient clipping bound", check=POSITIVE)
    mf_batch_size: int = option(
        2048,
        "(expected) batch of (user, liked item) records; with DP, Poisson sampling rate = batch / N",
        check=POSITIVE,
    )
    mf_local_epochs: int = option(2, "passes over the client's likes per round", check=POSITIVE)
    mf_fold_in: bool = option(
        False,
        "before its BPR steps, a client fits its users' embeddings to their likes with the item tables fixed (as "
        "the evaluation folds users in); not DP-SGD, so it needs dp = false (protect users with client-dp)",
    )
    mf_popularity_weight: float = option(
        0.0,
        "weight of log(1 + an item's federated rating count) added to its score (needs item-statistics)",
        check=NON_NEGATIVE,
    )
    mf_like_rate_weight: float = option(
        0.0,
        "weight of the like-rate logits (the item's from the federated counts, the user's from the question's "
        "history window) added to preference scores (needs item-statistics)",
        check=NON_NEGATIVE,
    )
    item_tables: str = option(
        "",
        "the retriever (rerank-top) and, for llm-input = 'hybrid', the soft tokens' tables: the item-tables.npz of "
        "a finished recommender = 'mf' run, or (not hybrid) the item-weights.npz of an 'ease' run (its summary.json "
        "beside it gives the epsilon the run composes with)",
    )


@dataclass(frozen=True)
class ItemItemConfig(Section):
    """The item-item model (``recommender = 'ease'``), fitted from the co-occurrence of ratings."""

    title = "item-item model"
    # Chosen on the validation split at record-level epsilon 8 over two seeds
    # (benchmarks/mf_dp_sweep.py, report-ease.md, report-ease-dislikes.md): a rank-16
    # projection removes most of the noise; bounds 5 to 12, rank 32 and l2 300 to 1000 are
    # within a standard error there; dislikes at weight 0.5 rank better than likes only.
    ease_bound: float = option(
        8.0, "L2 bound on one user's rated-items vector (its outer product is what the user adds)", check=POSITIVE
    )
    ease_dislike_weight: float = option(
        0.5,
        "a rated item the user does not like enters their vector at this weight, a liked one at 1 (0: likes only)",
        check=FRACTION,
    )
    ease_noise: float = option(
        0.64,
        "Gaussian noise std on each summed co-occurrence = this multiplier x one rating's sensitivity "
        "(ease-bound when it is at least 1.554, see fedrec.privacy.item_cooccurrence), added in shares by the "
        "clients; 0.64: epsilon 7.97 at delta 1e-5 (0: exact sums, no privacy)",
        check=NON_NEGATIVE,
    )
    ease_rank: int = option(
        16, "rank the summed co-occurrence is projected to before the fit (0: none)", check=NON_NEGATIVE
    )
    ease_l2: float = option(300.0, "EASE's L2 regularization of the item-item weights", check=POSITIVE)
    # Chosen on the same validation split (benchmarks/ease_recency.py): the held-out
    # interactions are each user's latest, which their latest ratings predict best.
    ease_recency_half_life: float = option(
        4.0,
        "when a user's row is scored (on their device; not in the release), a rating followed by n of theirs "
        "weighs floor + (1 - floor) x 0.5^(n / this) (0: every rating alike)",
        check=NON_NEGATIVE,
    )
    ease_recency_floor: float = option(
        0.1, "the weight the oldest ratings tend to under ease-recency-half-life", check=FRACTION
    )


@dataclass(frozen=True)
class ItemStatisticsConfig(Section):
    """Federated item statistics: each item's ratings and likes summed over the clients."""

    title = "federated item statistics"
    item_statistics: bool = option(
        False, "before round 1, sum each item's ratings and likes over the clients (SecAgg+ when on)"
    )
    item_statistics_bound: float = option(
        5.0,
        "L2 bound on one user's contribution: a user's (ratings, likes) indicators are scaled to it",
        check=POSITIVE,
    )
    item_statistics_noise: float = option(
        4.0,
        "Gaussian noise std on each summed count = this multiplier x the bound, added in shares by the clients "
        "(0: exact sums, no privacy)",
        check=NON_NEGATIVE,
    )


@dataclass(frozen=True)
class RecordDPConfig(Section):
    """Record-level differential privacy: DP-SGD with Opacus on every client."""

    title = "record-level DP"
    dp: bool = option(True, "train with DP-SGD (Opacus) and enforce each client's budget (false: plain training)")
    noise_multiplier: float = option(
        0.0, "DP-SGD noise multiplier; 0: calibrated to target-epsilon", check=NON_NEGATIVE
    )
    target_epsilon: float = option(
        8.0, "each client's privacy budget; a round that would exceed it is declined (dp = false: none)", check=POSITIVE
    )
    target_delta: float = option(1e-5, "delta of the budget", check=POSITIVE)
    dp_planned_rounds: int = option(
        0,
        "rounds each client's noise is calibrated for (0: num-server-rounds); with fraction-train < 1, the rounds "
        "a client is expected to join: less noise, and rounds beyond the budget are declined",
    )
    max_grad_norm: float = option(1.0, "per-example gradient clipping bound of the LLM adapter", check=POSITIVE)
    accountant: str = option("rdp", "Opacus accountant", choices=ACCOUNTANTS)
    secure_noise: bool = option(
        False,
        "draw DP-SGD's noise and Poisson sample from a generator seeded by the OS's CSPRNG with Opacus's secure "
        "Gaussian sampling, and the server's client-level noise and client sample from the OS (false: from the "
        "run's seed, reproducible, so anyone who knows the config can recompute the noise; for simulations only)",
    )

    def validate(self) -> None:
        """Delta a probability."""
        if not 0.0 < self.target_delta < 1.0:
            raise ConfigError(f"config key 'target-delta' must be in (0, 1), got {self.target_delta}")


@dataclass(frozen=True)
class SecAggConfig(Section):
    """SecAgg+ secure aggregation (see ``fedrec.privacy.secagg``)."""

    title = "secure aggregation"
    secure_aggregation: bool = option(False, "aggregate with SecAgg+: the server sees only the sum")
    num_shares: int = option(5, "each client's secrets are shared among this many ring neighbours (itself included)")
    reconstruction_threshold: int = option(
        3, "shares needed to reconstruct a secret (drop-out tolerance vs. collusion)"
    )
    clipping_range: float = option(
        4.0, "bound on each weighted update value (num-examples / max-weight) * (local - global)", check=POSITIVE
    )
    quantization_range: int = option(4_194_304, "levels over [-clipping-range, clipping-range] (2**22)", check=POSITIVE)
    modulus_range: int = option(4_294_967_296, "arithmetic modulus of the masked sum (2**32)")
    max_weight: float = option(
        10_000.0,
        "largest num-examples a client may report (r = num-examples / max-weight); a larger one is excluded",
        check=POSITIVE,
    )
    secagg_timeout: float = option(
        600.0, "seconds per key/unmask stage (the training stage uses round-timeout)", check=POSITIVE
    )

    def check_sum(self, num_inputs: int) -> None:
        """Refuse settings under which ``num_inputs`` survivors could overflow the modulus
        or under which the graph cannot reconstruct anything.
        """
        if self.modulus_range & (self.modulus_range - 1) or not 2 <= self.modulus_range <= 1 << 32:
            raise ValueError(f"modulus-range must be a power of two in [2, 2**32], got {self.modulus_range}")
        if num_inputs * self.quantization_range >= self.modulus_range:
            raise ValueError(
                f"{num_inputs} clients x quantization-range {self.quantization_range} >= modulus-range "
                f"{self.modulus_range}: the masked sum could wrap; lower quantization-range or raise modulus-range"
            )
        if self.num_shares < 3:
            raise ValueError(f"num-shares must be at least 3, got {self.num_shares}")
        if not 2 <= self.reconstruction_threshold <= self.num_shares:
            raise ValueError(
                f"reconstruction-threshold must be in [2, num-shares = {self.num_shares}], "
                f"got {self.reconstruction_threshold}"
            )

    def threshold_for(self, group_size: int) -> int:
        """Shares needed to reconstruct a secret shared among ``group_size`` nodes."""
        return min(self.reconstruction_threshold, group_size)


@dataclass(frozen=True)
class ClientDPConfig(Section):
    """Client-level differential privacy (see ``fedrec.privacy.client_level``)."""

    title = "client-level DP"
    client_dp: bool = option(False, "clip each client's update and add Gaussian noise to their sum")
    client_dp_clip: float = option(1.0, "L2 bound on each client's adapter update", check=POSITIVE)
    client_dp_noise_multiplier: float = option(
        1.0, "noise std on the sum of updates = multiplier * clip", check=POSITIVE
    )
    client_dp_noise: str = option(
        "central",
        "central: the server adds the noise; distributed: each client adds its share",
        choices=CLIENT_DP_NOISE,
    )


@dataclass(frozen=True)
class ServerConfig(Section):
    """Where a run writes its results, and resuming it."""

    title = "server"
    out: str = option("", "results folder; empty: runs/<UTC timestamp>")
    resume: bool = option(False, "continue the run in `out` from its checkpoint (fedrec simulate --resume RUN sets it)")
    client_state_dir: str = option(
        "", "simulation: per-partition privacy ledger folders (default <out>/nodes; a deployed node's state-dir wins)"
    )
