"""Forward time with the cached instruction prefix against recomputing it.

Both paths run in this process on the same bundle, the same batches and the
same backbone, alternating batch by batch so that drift on the machine hits
both equally. Reports the ratio and the fraction of positions the cache saves.

    .venv/bin/python bench/prefix_cache.py --batches 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import REPO_ROOT, machine, make_histories
from model.backbone import BackboneSettings, load_backbone
from model.bundle import instantiate, read_bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source")
    parser.add_argument("--bundle", default=str(REPO_ROOT / "adapters" / "beauty"), help="bundle folder")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per path")
    parser.add_argument("--batch-size", type=int, default=8, help="histories per batch")
    parser.add_argument("--history-length", type=int, default=10, help="items per history")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="backbone dtype")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    backbone = load_backbone(BackboneSettings(source=args.backbone, dtype=args.dtype))
    module = instantiate(backbone, read_bundle(Path(args.bundle), backbone.fingerprint))
    num_items = module.num_items
    batches = [make_histories(args.batch_size, args.history_length, num_items, seed=index) for index in range(args.batches + 2)]

    timings = {"recomputed prefix": [], "cached prefix": []}
    with torch.inference_mode():
        module.score_histories(batches[0])
        module.score_histories(batches[0], use_prefix_cache=True)
        for batch in batches[2:]:
            for label, cached in (("recomputed prefix", False), ("cached prefix", True)):
                started = time.perf_counter()
                module.score_histories(batch, use_prefix_cache=cached)
                timings[label].append(time.perf_counter() - started)
        plain = module.score_histories(batches[1])
        cached = module.score_histories(batches[1], use_prefix_cache=True)

    prefix = module.prefix_length
    used = min(args.history_length, module.config.max_history_length)
    total = prefix + used + module.response_ids.numel()
    saved = prefix / total
    ratio = statistics.median(timings["recomputed prefix"]) / statistics.median(timings["cached prefix"])
    max_difference = (plain - cached).abs().max().item()

    print(f"{args.batches} batches of {args.batch_size}, {total} positions per row ({prefix} instruction tokens), {args.dtype}")
    for label, values in timings.items():
        print(f"{label:18} median {statistics.median(values) * 1e3:8.1f} ms per batch")
    print(f"speed-up with the cached prefix: {ratio:.2f}x; positions saved: {saved:.0%}; max score difference {max_difference:.2e}")
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(sys.argv), "machine": machine(), "positions_per_row": total,
            "prefix_tokens": prefix, "fraction_saved": saved, "ratio": ratio,
            "median_ms": {label: statistics.median(values) * 1e3 for label, values in timings.items()},
            "max_score_difference": max_difference,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
