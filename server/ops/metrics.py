"""Prometheus metrics (prefix ``llava_``), exported with vLLM's own ``vllm:*`` metrics.

vLLM registers its engine metrics in prometheus_client's default registry when stats
are on; ours live there too, so ``/metrics`` serves both in one text exposition.
The engine's running / waiting counts and KV-cache usage are mirrored under our
prefix at scrape time.
"""

import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_MIRRORED = {
    "vllm:num_requests_running": ("llava_engine_requests_running", "Requests the engine is running"),
    "vllm:num_requests_waiting": ("llava_engine_requests_waiting", "Requests waiting in the engine's queue"),
    "vllm:kv_cache_usage_perc": ("llava_kv_cache_usage_ratio", "Fraction of the KV cache in use (0-1)"),
}


class _EngineMirror(Collector):
    """Reads vLLM's gauges from the default registry (skipping itself) at scrape time."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def describe(self):  # lets the registry learn our names without collecting
        return [GaugeMetricFamily(name, doc) for name, doc in _MIRRORED.values()]

    def collect(self):
        if getattr(self._busy, "on", False):  # the registry walk below reaches us again
            return
        self._busy.on = True
        try:
            values = {name: 0.0 for name in _MIRRORED}
            for family in REGISTRY.collect():
                for sample in family.samples:
                    if sample.name in values:
                        values[sample.name] += sample.value
        finally:
            self._busy.on = False
        for source, (name, doc) in _MIRRORED.items():
            yield GaugeMetricFamily(name, doc, value=values[source])


class Metrics:
    """Created once per process (prometheus metric names are global)."""

    _instance: "Metrics | None" = None

    def __init__(self) -> None:
        self.requests = Counter("llava_requests", "HTTP requests by endpoint and status", ["endpoint", "status"])
        self.ttft = Histogram("llava_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS)
        self.tpot = Histogram("llava_time_per_output_token_seconds", "Time per output token", buckets=TOKEN_BUCKETS)
        self.e2e = Histogram("llava_e2e_request_latency_seconds", "End-to-end latency", buckets=LATENCY_BUCKETS)
        self.queue = Histogram("llava_queue_time_seconds", "Time waiting in the engine queue", buckets=LATENCY_BUCKETS)
        self.prompt_tokens = Counter("llava_prompt_tokens", "Prompt tokens processed")
        self.generation_tokens = Counter("llava_generation_tokens", "Tokens generated")
        self.images = Histogram("llava_images_per_request", "Images per request", buckets=(0, 1, 2, 3, 4, 6, 8, 16))
        self.image_fetch = Histogram("llava_image_fetch_seconds", "Image fetch time", buckets=LATENCY_BUCKETS)
        self.image_preprocess = Histogram(
            "llava_image_preprocess_seconds", "Image decode + preprocess time", buckets=LATENCY_BUCKETS
        )
        self.image_cache_hits = Counter("llava_image_cache_hits", "Images served from the prepared-image cache")
        self.image_cache_misses = Counter("llava_image_cache_misses", "Images decoded and prepared anew")
        self.image_bytes_in_flight = Gauge(
            "llava_image_bytes_in_flight", "Image bytes (encoded and decoded) held by requests in flight"
        )
        self.inflight = Gauge("llava_requests_in_flight", "Requests being served by this server")
        REGISTRY.register(_EngineMirror())

    @classmethod
    def get(cls) -> "Metrics":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def exposition() -> bytes:
    return generate_latest(REGISTRY)
