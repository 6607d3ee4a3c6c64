"""Throughput of /recommend with micro-batching against one request at a time.

Two servers run one after the other on the same bundle and the same requests:
one with ``E4SREC_MAX_BATCH_SIZE=1`` (every request is its own forward pass)
and one with batching on. Both are driven by the same number of concurrent
clients on loopback for a fixed number of requests.

    .venv/bin/python bench/batching_throughput.py --clients 16 --requests 160
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

from common import REPO_ROOT, machine, make_histories, percentile
from model.bundle import read_manifest
from tests.server_process import RunningServer


async def drive(url: str, bundle: str, histories: list[list[int]], clients: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue = asyncio.Queue()
    for history in histories:
        queue.put_nowait(history)
    latencies: list[float] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            history = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post("/recommend", json={"bundle": bundle, "history": history, "k": 10})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        return time.perf_counter() - started, latencies


def run_server(args, batch_size: int, histories: list[list[int]], log: Path) -> tuple[float, list[float]]:
    env = {"E4SREC_MAX_BATCH_SIZE": str(batch_size), "E4SREC_MAX_WAIT_MS": str(args.max_wait_ms), "E4SREC_DTYPE": args.dtype}
    server = RunningServer(args.backbone, Path(args.adapters_dir), log, env)
    try:
        server.wait_ready(timeout_s=300)
        asyncio.run(drive(server.url, args.bundle, histories[: args.clients], args.clients))
        return asyncio.run(drive(server.url, args.bundle, histories, args.clients))
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source")
    parser.add_argument("--adapters-dir", default=str(REPO_ROOT / "adapters"), help="bundle repository")
    parser.add_argument("--bundle", default="beauty", help="bundle to request")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=160, help="timed requests per server")
    parser.add_argument("--history-length", type=int, default=10, help="items per history")
    parser.add_argument("--max-batch-size", type=int, default=16, help="batch size of the batching server")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batching wait of the batching server")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="backbone dtype")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    manifest = read_manifest(Path(args.adapters_dir) / args.bundle)
    histories = make_histories(args.requests, args.history_length, manifest.model.num_items)
    results = {}
    for label, batch_size in (("one at a time", 1), ("micro-batching", args.max_batch_size)):
        elapsed, latencies = run_server(args, batch_size, histories, Path(f"/tmp/e4srec-bench-{batch_size}.log"))
        results[label] = {
            "throughput_rps": len(histories) / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p95_ms": percentile(latencies, 0.95) * 1e3,
        }

    print(f"{args.requests} requests, {args.clients} concurrent clients, history {args.history_length}, {args.dtype}")
    print(f"{'':16} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9}")
    for label, figures in results.items():
        print(f"{label:16} {figures['throughput_rps']:8.2f} {figures['p50_ms']:9.1f} {figures['p95_ms']:9.1f}")
    ratio = results["micro-batching"]["throughput_rps"] / results["one at a time"]["throughput_rps"]
    print(f"throughput ratio micro-batching / one at a time: {ratio:.2f}x")
    if args.output:
        args.output.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(), "results": results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
