"""Compare POST /recommend latency with a bare forward pass of the same backbone.

Both are measured in one run on the same histories. First the service runs
as an ``e4srec serve`` subprocess on a loopback port, called by one client at
a time. After the service has stopped, the bare backbone decoder (no LoRA, no
head) runs in this process on inputs of the same length. The ratio is the service's overhead factor over the forward pass
that it cannot avoid.

    .venv/bin/python bench/recommend_latency.py --requests 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

from common import REPO_ROOT, machine, make_histories, percentile
from model.backbone import BackboneSettings, load_backbone
from model.bundle import read_manifest
from tests.server_process import RunningServer


def measure_service(args, histories: list[list[int]], log_path: Path) -> list[float]:
    env = {"E4SREC_DTYPE": args.dtype}
    if args.threads:
        env["E4SREC_TORCH_THREADS"] = str(args.threads)
    server = RunningServer(args.backbone, Path(args.adapters_dir), log_path, env)
    try:
        server.wait_ready(timeout_s=300)
        latencies = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for index, history in enumerate(histories[: args.warmup] + histories):
                started = time.perf_counter()
                response = client.post("/recommend", json={"bundle": args.bundle, "history": history, "k": 10})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                if index >= args.warmup:
                    latencies.append(elapsed)
        return latencies
    finally:
        server.stop()


def measure_bare_forward(args, histories: list[list[int]], prompt_length: int) -> list[float]:
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(BackboneSettings(source=args.backbone, dtype=args.dtype))
    hidden = backbone.hidden_size
    latencies = []
    with torch.inference_mode():
        for index, history in enumerate(histories[: args.warmup] + histories):
            length = prompt_length + len(history)
            inputs_embeds = torch.randn(1, length, hidden, dtype=backbone.dtype)
            started = time.perf_counter()
            backbone.decoder(inputs_embeds=inputs_embeds, use_cache=False)
            elapsed = time.perf_counter() - started
            if index >= args.warmup:
                latencies.append(elapsed)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source, as for e4srec serve")
    parser.add_argument("--adapters-dir", default=str(REPO_ROOT / "adapters"), help="bundle repository")
    parser.add_argument("--bundle", default="beauty", help="bundle to request")
    parser.add_argument("--requests", type=int, default=100, help="timed requests (and as many bare forwards)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests before timing")
    parser.add_argument("--history-length", type=int, default=10, help="items per history")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="backbone dtype on both sides")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    manifest = read_manifest(Path(args.adapters_dir) / args.bundle)
    histories = make_histories(args.requests, args.history_length, manifest.model.num_items, seed=0)
    prompt_length = len(manifest.model.instruction_ids) + len(manifest.model.response_ids)
    used = min(args.history_length, manifest.model.max_history_length)

    log_path = Path("/tmp/e4srec-bench-server.log")
    service = measure_service(args, histories, log_path)
    bare = measure_bare_forward(args, [history[-used:] for history in histories], prompt_length)

    rows = {
        "service /recommend": service,
        "bare backbone forward": bare,
    }
    print(f"{args.requests} requests, history {args.history_length} items ({prompt_length + used} positions), {args.dtype}")
    print(f"{'':24} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    for name, values in rows.items():
        print(f"{name:24} {percentile(values, 0.5) * 1e3:9.1f} {percentile(values, 0.95) * 1e3:9.1f} {statistics.fmean(values) * 1e3:9.1f}")
    ratio_p50 = percentile(service, 0.5) / percentile(bare, 0.5)
    ratio_p95 = percentile(service, 0.95) / percentile(bare, 0.95)
    print(f"ratio service / bare forward: p50 {ratio_p50:.2f}x, p95 {ratio_p95:.2f}x")

    if args.output:
        args.output.write_text(json.dumps({
            "command": " ".join(sys.argv),
            "machine": machine(),
            "requests": args.requests,
            "history_length": args.history_length,
            "dtype": args.dtype,
            "service_p50_ms": percentile(service, 0.5) * 1e3,
            "service_p95_ms": percentile(service, 0.95) * 1e3,
            "bare_p50_ms": percentile(bare, 0.5) * 1e3,
            "bare_p95_ms": percentile(bare, 0.95) * 1e3,
            "ratio_p50": ratio_p50,
            "ratio_p95": ratio_p95,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
