"""Counters and histograms of the reward server, rendered in the Prometheus text format.

All updates happen on the server's event loop, so no locking is needed.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative-bucket histogram of one series (Prometheus ``_bucket``, ``_sum``, ``_count``)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        prefix = labels + "," if labels else ""
        cumulative = 0
        out = []
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            cumulative += count
            edge = "+Inf" if bound == float("inf") else _number(bound)
            out.append(f'{name}_bucket{{{prefix}le="{edge}"}} {cumulative}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {_number(self.total)}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


class ServerMetrics:
    """What /metrics reports."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.model_calls = 0
        self.model_errors = 0
        self.items_scored = 0
        self.batch_items = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.queue_items = 0
        self.queue_requests = 0
        self.dropped_requests: dict[str, int] = defaultdict(int)

    def record_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[(path, status)] += 1
        self.latency.setdefault(path, Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def record_batch(self, num_requests: int, num_items: int) -> None:
        self.model_calls += 1
        self.items_scored += num_items
        self.batch_items.observe(num_items)
        self.batch_requests.observe(num_requests)

    def render(self) -> str:
        lines = [
            "# HELP prefkit_serve_requests_total HTTP requests answered, by path and status code.",
            "# TYPE prefkit_serve_requests_total counter",
        ]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'prefkit_serve_requests_total{{path="{path}",code="{status}"}} {count}')
        lines += [
            "# HELP prefkit_serve_errors_total HTTP answers with a 4xx or 5xx status, by code.",
            "# TYPE prefkit_serve_errors_total counter",
        ]
        errors: dict[int, int] = defaultdict(int)
        for (_, status), count in self.requests.items():
            if status >= 400:
                errors[status] += count
        for status, count in sorted(errors.items()):
            lines.append(f'prefkit_serve_errors_total{{code="{status}"}} {count}')
        lines += [
            "# HELP prefkit_serve_request_duration_seconds Time from request to answer, by path.",
            "# TYPE prefkit_serve_request_duration_seconds histogram",
        ]
        for path, histogram in sorted(self.latency.items()):
            lines += histogram.lines("prefkit_serve_request_duration_seconds", f'path="{path}"')
        lines += [
            "# HELP prefkit_serve_model_calls_total Batches scored by the model.",
            "# TYPE prefkit_serve_model_calls_total counter",
            f"prefkit_serve_model_calls_total {self.model_calls}",
            "# HELP prefkit_serve_model_errors_total Batches whose model call raised.",
            "# TYPE prefkit_serve_model_errors_total counter",
            f"prefkit_serve_model_errors_total {self.model_errors}",
            "# HELP prefkit_serve_items_scored_total Items (prompt, response) scored.",
            "# TYPE prefkit_serve_items_scored_total counter",
            f"prefkit_serve_items_scored_total {self.items_scored}",
            "# HELP prefkit_serve_batch_items Items per model call.",
            "# TYPE prefkit_serve_batch_items histogram",
            *self.batch_items.lines("prefkit_serve_batch_items"),
            "# HELP prefkit_serve_batch_requests Requests per model call.",
            "# TYPE prefkit_serve_batch_requests histogram",
            *self.batch_requests.lines("prefkit_serve_batch_requests"),
            "# HELP prefkit_serve_queue_items Items waiting to be scored.",
            "# TYPE prefkit_serve_queue_items gauge",
            f"prefkit_serve_queue_items {self.queue_items}",
            "# HELP prefkit_serve_queue_requests Requests waiting to be scored.",
            "# TYPE prefkit_serve_queue_requests gauge",
            f"prefkit_serve_queue_requests {self.queue_requests}",
            "# HELP prefkit_serve_dropped_requests_total Queued requests dropped before scoring, by reason.",
            "# TYPE prefkit_serve_dropped_requests_total counter",
        ]
        for reason, count in sorted(self.dropped_requests.items()):
            lines.append(f'prefkit_serve_dropped_requests_total{{reason="{reason}"}} {count}')
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))
