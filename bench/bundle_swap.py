"""Costs of serving many bundles on one backbone, measured side by side.

* switch: a forward pass that alternates between two resident bundles
  against one that stays on one bundle;
* load: reading, validating and attaching a bundle from disk, against a
  forward pass;
* mixed batch: one forward pass over rows of two bundles (each with its own
  LoRA adapter) against the same batch size on one bundle.

The second bundle is a copy of the first under another name, so both have the
same size and shapes.

    .venv/bin/python bench/bundle_swap.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO_ROOT, machine, make_histories
from model.backbone import BackboneSettings, load_backbone
from model.bundle import instantiate, read_bundle
from model.lora import remove_adapter
from model.mixed_batch import score_mixed_batch


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source")
    parser.add_argument("--bundle", default=str(REPO_ROOT / "adapters" / "beauty"), help="bundle folder")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of each measurement")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch in the mixed-batch measurement")
    parser.add_argument("--history-length", type=int, default=10, help="items per history")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    backbone = load_backbone(BackboneSettings(source=args.backbone))
    folder = Path(args.bundle)
    first = instantiate(backbone, read_bundle(folder, backbone.fingerprint), adapter_name="first")
    second = instantiate(backbone, read_bundle(folder, backbone.fingerprint), adapter_name="second")
    histories = make_histories(args.batch_size, args.history_length, first.num_items)
    single = histories[:1]

    figures: dict[str, list[float]] = {"same bundle": [], "alternating bundles": [], "load from disk": [],
                                       "single-bundle batch": [], "mixed batch": []}
    with torch.inference_mode():
        first.score_histories(single, use_prefix_cache=True)
        second.score_histories(single, use_prefix_cache=True)
        for index in range(args.repeats):
            figures["same bundle"].append(timed(lambda: first.score_histories(single, use_prefix_cache=True)))
            module = first if index % 2 else second
            figures["alternating bundles"].append(timed(lambda module=module: module.score_histories(single, use_prefix_cache=True)))
            figures["single-bundle batch"].append(timed(lambda: first.score_histories(histories)))
            rows = [((first, second)[row % 2], history) for row, history in enumerate(histories)]
            figures["mixed batch"].append(timed(lambda rows=rows: score_mixed_batch(backbone, rows)))

        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / folder.name
            shutil.copytree(folder, copy)
            for index in range(max(3, args.repeats // 4)):
                name = f"load-{index}"

                def load(name=name):
                    module = instantiate(backbone, read_bundle(copy, backbone.fingerprint), adapter_name=name)
                    module.score_histories(single, use_prefix_cache=True)

                figures["load from disk"].append(timed(load))
                remove_adapter(backbone, name)

    medians = {label: statistics.median(values) * 1e3 for label, values in figures.items()}
    switch_ratio = medians["alternating bundles"] / medians["same bundle"]
    load_ratio = medians["load from disk"] / medians["same bundle"]
    mixed_throughput_ratio = medians["single-bundle batch"] / medians["mixed batch"]
    print(f"{args.repeats} repeats, history {args.history_length}, batch {args.batch_size}, float32")
    for label, value in medians.items():
        print(f"{label:22} median {value:8.1f} ms")
    print(f"switch between resident bundles: {switch_ratio:.2f}x the time of a request on one bundle")
    print(f"load from disk (validate, attach, dry run): {load_ratio:.1f}x the time of a request")
    print(f"mixed-batch throughput / single-bundle throughput: {mixed_throughput_ratio:.2f}x")
    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(sys.argv), "machine": machine(), "median_ms": medians,
            "switch_ratio": switch_ratio, "load_ratio": load_ratio, "mixed_throughput_ratio": mixed_throughput_ratio,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
