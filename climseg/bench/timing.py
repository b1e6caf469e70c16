"""Timing GPU work as the CUDA-kernel benchmark does: CUDA events around each repeat, the L2
cache flushed before it (outside the timed interval) so that small inputs are not timed out of
the cache, and the host time of the call beside it; a monotonic clock on CPU (smoke checks).
"""

import statistics
import time

import torch

FLUSH_BYTES = 256 << 20  # zeroed before each repeat: more than any GPU's L2


class Timer:
    """``timer(fn) -> (median, p20, p80, host median)`` in ms: CUDA events on a GPU (L2 flushed
    before each repeat, outside the timed interval), a monotonic clock on CPU (the smoke check).
    The host median is the time the call takes to return to Python (to enqueue its work, or
    longer where it synchronises): close to the event time, the row is bound by launches and
    Python, not by memory."""

    def __init__(self, device, warmup, repeats):
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def __call__(self, fn):
        cuda = self.device.type == "cuda"
        for _ in range(self.warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(self.device)
        times, host = [], []
        for _ in range(self.repeats):
            if cuda:
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                t = time.perf_counter()
                fn()
                host.append(1e3 * (time.perf_counter() - t))
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t))
                host.append(times[-1])
        times.sort()
        q = lambda p: times[min(len(times) - 1, int(p * (len(times) - 1) + 0.5))]  # noqa: E731
        return statistics.median(times), q(0.2), q(0.8), statistics.median(host)
