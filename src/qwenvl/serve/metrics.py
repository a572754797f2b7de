"""Server metrics and their Prometheus text exposition (format 0.0.4), written by hand.

Counters, gauges and histograms are updated from the event loop and the scheduler thread, so every
update takes one lock; rendering copies under the same lock."""

from __future__ import annotations

import bisect
import threading

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)   # last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    PREFIX = "qwenvl"

    def __init__(self, max_batch: int):
        self.lock = threading.Lock()
        self.max_batch = max_batch
        self.requests: dict[str, int] = {}          # HTTP status -> count (chat completions)
        self.finished: dict[str, int] = {}          # finish reason -> count of choices
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0               # of those, taken from the prefix cache
        self.prefix_cache = None                    # the engine's PrefixCache, if any: its stats are rendered
        self.generation_tokens = 0
        self.decode_steps = 0
        self.waiting = 0                            # queued for a slot
        self.preprocessing = 0                      # media loading / processor
        self.running = 0                            # sequences holding a slot
        self.max_running = 0                        # largest decode batch seen
        self.batch_size = Histogram(range(1, max_batch + 1))
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue_time = Histogram(LATENCY_BUCKETS)

    def add(self, name: str, value: float = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + value)

    def count(self, table: str, key: str) -> None:
        with self.lock:
            t = getattr(self, table)
            t[key] = t.get(key, 0) + 1

    def observe(self, name: str, value: float) -> None:
        with self.lock:
            getattr(self, name).observe(value)

    def step(self, batch: int) -> None:
        with self.lock:
            self.decode_steps += 1
            self.batch_size.observe(batch)
            self.max_running = max(self.max_running, batch)

    def set_load(self, waiting: int, running: int) -> None:
        with self.lock:
            self.waiting = waiting
            self.running = running

    def snapshot(self) -> dict:
        with self.lock:
            return {"waiting": self.waiting, "running": self.running, "preprocessing": self.preprocessing,
                    "max_running": self.max_running, "slots": self.max_batch,
                    "prompt_tokens": self.prompt_tokens, "cached_prompt_tokens": self.cached_prompt_tokens,
                    "generation_tokens": self.generation_tokens}

    def render(self) -> str:
        p = self.PREFIX
        lines: list[str] = []

        def head(name, kind, help_):
            lines.append(f"# HELP {p}_{name} {help_}")
            lines.append(f"# TYPE {p}_{name} {kind}")

        def hist(name, h: Histogram, help_):
            head(name, "histogram", help_)
            acc = 0
            for bound, c in zip(h.buckets, h.counts):
                acc += c
                lines.append(f'{p}_{name}_bucket{{le="{_num(bound)}"}} {acc}')
            lines.append(f'{p}_{name}_bucket{{le="+Inf"}} {h.count}')
            lines.append(f"{p}_{name}_sum {_num(h.sum)}")
            lines.append(f"{p}_{name}_count {h.count}")

        with self.lock:
            head("requests_total", "counter", "Chat completion requests by HTTP status.")
            for code, n in sorted(self.requests.items()):
                lines.append(f'{p}_requests_total{{status="{code}"}} {n}')
            head("finished_total", "counter", "Finished choices by finish reason.")
            for reason, n in sorted(self.finished.items()):
                lines.append(f'{p}_finished_total{{reason="{reason}"}} {n}')
            for name, value, help_ in (
                ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens of admitted requests."),
                ("prompt_tokens_cached_total", self.cached_prompt_tokens,
                 "Prompt tokens whose keys/values came from the prefix cache."),
                ("generation_tokens_total", self.generation_tokens, "Tokens generated."),
                ("decode_steps_total", self.decode_steps, "Batched decode steps."),
            ):
                head(name, "counter", help_)
                lines.append(f"{p}_{name} {value}")
            for name, value, help_ in (
                ("queue_length", self.waiting, "Requests waiting for a free slot."),
                ("preprocessing_requests", self.preprocessing, "Requests loading media / being processed."),
                ("running_requests", self.running, "Sequences holding a slot (the running batch size)."),
                ("max_running_batch", self.max_running, "Largest decode batch since start."),
                ("batch_slots", self.max_batch, "Slots of the engine (--max-batch)."),
            ):
                head(name, "gauge", help_)
                lines.append(f"{p}_{name} {value}")
            if self.prefix_cache is not None:
                pc = self.prefix_cache.snapshot()
                for name, kind, value, help_ in (
                    ("prefix_cache_queried_tokens_total", "counter", pc["queried_tokens"],
                     "Prompt tokens looked up in the prefix cache (each prompt but its last token)."),
                    ("prefix_cache_hit_tokens_total", "counter", pc["cached_tokens"],
                     "Prompt tokens found in the prefix cache (all sequences, n > 1 siblings included)."),
                    ("prefix_cache_evictions_total", "counter", pc["kv_evictions"], "KV blocks evicted (LRU)."),
                    ("prefix_cache_bytes", "gauge", pc["kv_bytes"], "Bytes of stored KV blocks."),
                    ("prefix_cache_blocks", "gauge", pc["kv_blocks"], "Stored KV blocks."),
                    ("vision_cache_hits_total", "counter", pc["vision_hits"],
                     "Images/videos whose features came from the vision cache."),
                    ("vision_cache_misses_total", "counter", pc["vision_misses"],
                     "Images/videos encoded by the vision tower (cache on)."),
                    ("vision_cache_bytes", "gauge", pc["vision_bytes"], "Bytes of stored vision features."),
                ):
                    head(name, kind, help_)
                    lines.append(f"{p}_{name} {value}")
            hist("batch_size", self.batch_size, "Sequences per decode step.")
            hist("time_to_first_token_seconds", self.ttft, "From request arrival to the first token.")
            hist("request_latency_seconds", self.latency, "From request arrival to the last token.")
            hist("queue_time_seconds", self.queue_time, "From submission to getting a slot.")
        return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value}; for tests and the load tool."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
