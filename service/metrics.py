"""Prometheus metrics of the service, in the Prometheus naming conventions.

Each application gets its own ``CollectorRegistry``, so several apps in one
process (tests) do not share counters. Labels never carry user data: routes
are path templates, bundles are bundle names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        # HTTP
        self.http_requests = Counter(
            "e4srec_http_requests", "HTTP requests by route template, method and status code.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "e4srec_http_request_duration_seconds", "HTTP request latency from first byte to response.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

        # Micro-batching and forward passes
        self.queue_wait = Histogram(
            "e4srec_queue_wait_seconds", "Time a recommendation request waits for its forward pass to start.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.forward_duration = Histogram(
            "e4srec_forward_duration_seconds", "Duration of one batched forward pass, top-k included.",
            ["bundle"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "e4srec_batch_size", "Requests served by one forward pass.",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "e4srec_queue_depth", "Recommendation requests waiting for a forward pass.", registry=self.registry,
        )

        # Bundle residency and uploads
        self.resident_bundles = Gauge(
            "e4srec_resident_bundles", "Bundles loaded on the backbone.", registry=self.registry,
        )
        self.bundle_loads = Counter(
            "e4srec_bundle_loads", "Bundle loads onto the backbone.", ["bundle"], registry=self.registry,
        )
        self.bundle_evictions = Counter(
            "e4srec_bundle_evictions", "Bundles removed from the backbone's memory.", ["bundle"], registry=self.registry,
        )
        self.bundle_uploads = Counter(
            "e4srec_bundle_uploads", "Bundle uploads by result (installed, rejected) and rejection reason.",
            ["result", "reason"], registry=self.registry,
        )

        # Prefix and response caches, Redis
        self.prefix_cache_hits = Counter(
            "e4srec_prefix_cache_hits", "Forward passes that reused the cached instruction prefix.",
            registry=self.registry,
        )
        self.prefix_cache_misses = Counter(
            "e4srec_prefix_cache_misses", "Forward passes that had to compute the instruction prefix.",
            registry=self.registry,
        )
        self.response_cache_hits = Counter(
            "e4srec_response_cache_hits", "Recommendations answered from the response cache.", registry=self.registry,
        )
        self.response_cache_misses = Counter(
            "e4srec_response_cache_misses", "Recommendations not found in the response cache.", registry=self.registry,
        )
        self.redis_errors = Counter(
            "e4srec_redis_errors", "Failed Redis operations by operation; cache operations are then bypassed.",
            ["operation"], registry=self.registry,
        )

        # Back-pressure
        self.rejected_requests = Counter(
            "e4srec_rejected_requests", "Requests rejected before a forward pass, by reason.",
            ["reason"], registry=self.registry,
        )
