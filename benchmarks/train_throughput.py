"""Examples/s of one client's local epoch without DP-SGD, with it, and with it and secure
noise (``secure-noise``: noise and Poisson sample from a CSPRNG-seeded generator, Opacus's
secure Gaussian sampling), and peak memory.

Each (backbone, mode) runs in a fresh process (so peak RSS is its own), modes
interleaved and repeated; the report gives medians and the DP / non-DP and secure / plain
DP ratios measured side by side in this run. The frozen-prefix pass (computed once per example, shared
by both modes) is timed separately.

    python benchmarks/train_throughput.py                 # tiny-llama and smollm2
    python benchmarks/train_throughput.py --backbones tiny-llama --examples 256
    python benchmarks/train_throughput.py --backbones FOLDER --examples 3000 --lora-layers 4 \
        --batch-size 1024 --physical-batch-size 128   # the `full` preset's batches (GPU)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


MODES = ("plain", "dp", "dp-secure-noise")


@dataclass(frozen=True)
class Setting:
    """What one measurement trains: backbone, LoRA depth, precision and batches."""

    backbone: str
    examples: int
    top_layers: int
    compute_dtype: str
    batch_size: int
    physical_batch_size: int


def _worker(setting: Setting, mode: str, queue: mp.Queue) -> None:
    import torch

    from fedrec.config import DataConfig, RecordDPConfig, TrainingConfig
    from fedrec.models.backbone import load_backbone
    from fedrec.models.lora import LoraSettings
    from fedrec.models.scorer import Scorer
    from fedrec.privacy.ledger import PersistentAccountant
    from fedrec.privacy.record_level import PrivateTraining, plan_round
    from fedrec.tasks.preference.dataset import load_federated_data
    from fedrec.tasks.preference.prompt import PREFERENCE_QUESTION
    from fedrec.tasks.preference.scoring import preference_loss
    from fedrec.tasks.training import LocalTraining, train_adapter

    backbone = setting.backbone
    modules = ("query", "value") if backbone in ("tiny-bert", "minilm") else ("q_proj", "v_proj")
    tiny = backbone.startswith("tiny")
    scorer = Scorer(
        load_backbone(backbone),
        LoraSettings(target_modules=modules, top_layers=0 if tiny else setting.top_layers),
        PREFERENCE_QUESTION,
        max_length=256,
        compute_dtype=getattr(torch, setting.compute_dtype),
    )
    if torch.cuda.is_available():
        scorer.to("cuda")
    data = load_federated_data(DataConfig(history_length=10, train_examples_per_user=4), 42, 300, 1)
    chosen = data.train_examples(0)[: setting.examples]
    tokens = scorer.encode(data.prompts(chosen))
    started = time.perf_counter()
    states = scorer.prefix_states(tokens, batch_size=16)
    prefix_seconds = time.perf_counter() - started
    labels = torch.tensor([ex.label for ex in chosen])
    training = TrainingConfig(
        local_epochs=1,
        batch_size=setting.batch_size,
        physical_batch_size=setting.physical_batch_size,
        learning_rate=1e-3,
    )
    private_training = None
    if mode != "plain":
        plan = plan_round(RecordDPConfig(noise_multiplier=1.0), 1, len(states), training.batch_size, 1)
        private_training = PrivateTraining(plan, 1.0, PersistentAccountant(), mode == "dp-secure-noise")
    started = time.perf_counter()
    result = train_adapter(scorer, states, labels, LocalTraining(training, preference_loss), private_training)
    seconds = time.perf_counter() - started
    queue.put(
        {
            "examples_per_s": result.examples / seconds,
            "prefix_examples_per_s": len(states) / prefix_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
            "mean_tokens": sum(map(len, tokens)) / len(tokens),
            "trainable_params": sum(p.numel() for p in scorer.trainable_parameters()),
        }
    )


def measure(setting: Setting, mode: str) -> dict:
    """One run in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(setting, mode, queue))
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return result


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {mp.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="tiny-llama,smollm2")
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lora-layers", type=int, default=2, help="LoRA on the top N layers of real backbones")
    parser.add_argument("--compute-dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=64, help="expected (DP: Poisson) batch")
    parser.add_argument("--physical-batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = parser.parse_args()
    rows = []
    for backbone in args.backbones.split(","):
        setting = Setting(
            backbone, args.examples, args.lora_layers, args.compute_dtype, args.batch_size, args.physical_batch_size
        )
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:  # interleaved, side by side
                runs[mode].append(measure(setting, mode))
        plain, dp, secure = (statistics.median(r["examples_per_s"] for r in runs[mode]) for mode in MODES)
        rows.append(
            {
                **asdict(setting),
                "mean_tokens": runs["plain"][0]["mean_tokens"],
                "trainable_params": runs["plain"][0]["trainable_params"],
                "prefix_examples_per_s": statistics.median(r["prefix_examples_per_s"] for m in MODES for r in runs[m]),
                "train_examples_per_s": plain,
                "dp_train_examples_per_s": dp,
                "dp_secure_noise_train_examples_per_s": secure,
                "dp_over_plain": dp / plain,
                "secure_noise_over_dp": secure / dp,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["plain"]),
                "dp_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["dp"]),
                "dp_peak_gpu_mb": max(r["peak_gpu_mb"] for r in runs["dp"]),
            }
        )
    report = {
        "command": "python benchmarks/train_throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": _machine(),
        "lora_layers": args.lora_layers,
        "compute_dtype": args.compute_dtype,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'backbone':<11} {'tokens':>6} {'params':>8} {'prefix ex/s':>11} {'train ex/s':>10} "
        f"{'DP ex/s':>8} {'DP/plain':>8} {'secure/DP':>9} {'RSS MB':>7} {'DP RSS MB':>9}"
    )
    for r in rows:
        print(
            f"{r['backbone']:<11} {r['mean_tokens']:>6.0f} {r['trainable_params']:>8} "
            f"{r['prefix_examples_per_s']:>11.1f} {r['train_examples_per_s']:>10.1f} "
            f"{r['dp_train_examples_per_s']:>8.1f} {r['dp_over_plain']:>8.2f} {r['secure_noise_over_dp']:>9.2f} "
            f"{r['peak_rss_mb']:>7.0f} "
            f"{r['dp_peak_rss_mb']:>9.0f}"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
