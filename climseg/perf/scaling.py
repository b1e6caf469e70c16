"""A weak-scaling model of data-parallel training: N nodes x G GPUs, one step.

Every number the model uses is an input; nothing is fitted to the result it is
compared with. Times in seconds, sizes in bytes, bandwidths in bytes/s per
direction, latencies in seconds per message step.

Compute. ``t_c = batch * flops_per_sample / rate`` on one GPU (``rate`` in
FLOP/s, measured or given); forward is a third of it, backward two thirds.

Allreduce of S bytes (NCCL's conventions: a ring allreduce moves
2 (n - 1) / n * S through every rank, so busbw = algbw * 2 (n - 1) / n):

* flat ring over P = N G ranks, its slowest link the node's network injection
  bandwidth ``B_net`` (a ring enters and leaves each node once) or the
  intra-node link ``B_intra``:
  ``t = 2 (P - 1) alpha_net + 2 (P - 1) / P * S / min(B_net, B_intra)``
* hierarchical (SC18, Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE): intra-node
  reduce-scatter, G concurrent cross-node ring allreduces of S / G sharing the
  node's injection bandwidth, intra-node allgather:
  ``t = 2 [(G - 1) alpha_intra + (G - 1) / G * S / B_intra]
       + 2 (N - 1) alpha_net + 2 (N - 1) / N * S / B_net``
  Both move the same bytes through a node's network port; the hierarchical
  algorithm pays 2 (N - 1) network latencies instead of 2 (N G - 1).

Buckets. S is sent in ``ceil(S / bucket)`` buckets; each pays the latency
terms. Without gradient lag the buckets overlap the rest of backward: the
exposed time is ``max(last bucket, t_comm - (1 - 1/k) t_backward)``. With
gradient lag 1 the allreduce of step t overlaps all of step t + 1:
``max(0, t_comm - t_c)``.

Jitter. When per-GPU step times vary independently with coefficient of
variation ``cv``, every step waits for the slowest of P: for normal
variation E[max] ~= mean * (1 + cv * sqrt(2 ln P)) (the leading term of the
extreme-value asymptotics).

Step time ``t = t_c (1 + cv sqrt(2 ln P)) + exposed communication``;
weak-scaling efficiency ``E = t_c / t``; sustained rate ``P * batch *
flops_per_sample / t``.
"""

import dataclasses
import math


@dataclasses.dataclass
class System:
    name: str
    gpus_per_node: int
    intra_bandwidth: float  # bytes/s per direction, per GPU, on the slowest intra-node link of a ring
    intra_latency: float  # s per message step inside a node
    net_bandwidth: float  # bytes/s per direction, node injection
    net_latency: float  # s per message step across nodes
    sources: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Workload:
    name: str
    flops_per_sample: float  # FLOP, forward + backward
    batch_per_gpu: int
    gradient_bytes: float
    rate_per_gpu: float  # FLOP/s of one GPU on this workload (measured or given)
    bucket_bytes: float = 64 * 2**20
    gradient_lag: int = 0
    jitter_cv: float = 0.0  # coefficient of variation of one GPU's step time
    sources: dict = dataclasses.field(default_factory=dict)


def ring_allreduce_time(nbytes, ranks, bandwidth, latency):
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def allreduce_time(nbytes, nodes, system, algorithm):
    G = system.gpus_per_node
    if algorithm == "flat":
        return ring_allreduce_time(
            nbytes,
            nodes * G,
            min(system.net_bandwidth, system.intra_bandwidth) if nodes > 1 else system.intra_bandwidth,
            system.net_latency if nodes > 1 else system.intra_latency,
        )
    if algorithm != "hierarchical":
        raise ValueError(f"algorithm must be flat or hierarchical, not {algorithm!r}")
    intra = 0.0
    if G > 1:
        intra = 2 * ((G - 1) * system.intra_latency + (G - 1) / G * nbytes / system.intra_bandwidth)
    return intra + ring_allreduce_time(nbytes, nodes, system.net_bandwidth, system.net_latency)


def step(workload, system, nodes, algorithm="hierarchical"):
    """One step at ``nodes`` nodes: a dict with the parts of the step time and the efficiency."""
    P = nodes * system.gpus_per_node
    t_c = workload.batch_per_gpu * workload.flops_per_sample / workload.rate_per_gpu
    buckets = max(1, math.ceil(workload.gradient_bytes / workload.bucket_bytes))
    full, rest = divmod(workload.gradient_bytes, workload.bucket_bytes)
    sizes = [workload.bucket_bytes] * int(full) + ([rest] if rest else [])
    t_comm = sum(allreduce_time(b, nodes, system, algorithm) for b in sizes) if P > 1 else 0.0
    if workload.gradient_lag:
        exposed = max(0.0, t_comm - t_c)
    else:
        last = allreduce_time(sizes[-1], nodes, system, algorithm) if P > 1 else 0.0
        exposed = max(last, t_comm - (1 - 1 / buckets) * (2 / 3) * t_c) if P > 1 else 0.0
    wait = t_c * workload.jitter_cv * math.sqrt(2 * math.log(P)) if P > 1 else 0.0
    t = t_c + wait + exposed
    return dict(
        nodes=nodes,
        gpus=P,
        algorithm=algorithm,
        compute_s=t_c,
        allreduce_s=t_comm,
        exposed_s=exposed,
        jitter_s=wait,
        step_s=t,
        efficiency=t_c / t,
        sustained_flops=P * workload.batch_per_gpu * workload.flops_per_sample / t,
    )


# ---------------------------------------------------------------------------------------------
# presets: published hardware figures and the SC18 network
# ---------------------------------------------------------------------------------------------
KURTH2018_PARAMETERS = 43_669_251  # the SC18 paper's count (our kurth2018 with norm="none")
KURTH2018_FLOPS = 14.41e12  # forward + backward per 768 x 1152 sample, as the SC18 code logged

SUMMIT = System(
    "Summit (IBM AC922: 2 POWER9 + 6 V100 per node)",
    gpus_per_node=6,
    intra_bandwidth=32e9,
    intra_latency=2e-6,
    net_bandwidth=23e9,
    net_latency=1e-6,
    sources=dict(
        gpus_per_node="OLCF Summit User Guide: 'two IBM POWER9 processors and six NVIDIA Volta V100 accelerators'",
        intra_bandwidth="NVLink 2.0 50 GB/s per direction between GPUs of a socket (OLCF guide); a ring over all 6 "
        "crosses the X-Bus between sockets, 64 GB/s bidirectional = 32 GB/s per direction (WikiChip): "
        "the slower, 32 GB/s, bounds the intra-node ring",
        net_bandwidth="OLCF guide: dual-rail EDR InfiniBand, 'node injection bandwidth of 23 GB/s'",
        net_latency="EDR InfiniBand MPI point-to-point latency, order 1 microsecond (ConnectX-5 class); not "
        "measured here — it changes the predictions below by well under 1%",
        intra_latency="NVLink/NCCL step latency, order microseconds (assumed; negligible at these sizes)",
    ),
)

H100_NODE = System(
    "DGX H100-class node (8 H100 SXM, NVLink 4 / NVSwitch, 8 x 400 Gb/s NDR)",
    gpus_per_node=8,
    intra_bandwidth=450e9,
    intra_latency=2e-6,
    net_bandwidth=400e9,
    net_latency=1e-6,
    sources=dict(
        intra_bandwidth="NVLink 4: 900 GB/s bidirectional per GPU = 450 GB/s per direction",
        net_bandwidth="DGX H100: eight single-port ConnectX-7, up to 400 Gb/s each = 400 GB/s per node per direction",
        net_latency="NDR InfiniBand point-to-point latency, order 1 microsecond (assumed)",
    ),
)


def summit_kurth2018(precision="fp32", jitter_cv=0.0, gradient_lag=0):
    """SC18's DeepLabv3+ on Summit. Per-GPU rate: FP32 from the paper's own definition of its
    efficiency (325.8 PF/s at 27,360 GPUs at 90.7% of linear scaling from one GPU gives one GPU's
    rate, 13.13 TFLOP/s); FP16: the paper's peak 1.13 EF/s over 27,360 GPUs (41.3 TFLOP/s, the
    fastest step). Gradients of 43.67 M parameters in the training precision. Batch 2 per GPU."""
    if precision == "fp32":
        rate, grad_bytes = 325.8e15 / 27360 / 0.907, 4 * KURTH2018_PARAMETERS
        why = "325.8 PF/s / 27,360 GPUs / 0.907 (the paper's single-GPU baseline implied by its efficiency)"
    elif precision == "fp16":
        rate, grad_bytes = 1.13e18 / 27360, 2 * KURTH2018_PARAMETERS
        why = "1.13 EF/s peak / 27,360 GPUs (the paper's fastest step)"
    else:
        raise ValueError("precision must be fp32 or fp16")
    return Workload(
        f"kurth2018 {precision}",
        KURTH2018_FLOPS,
        2,
        grad_bytes,
        rate,
        jitter_cv=jitter_cv,
        gradient_lag=gradient_lag,
        sources=dict(
            rate_per_gpu=why,
            flops_per_sample="14.41 TFLOP/sample logged by the SC18 code",
            gradient_bytes=f"{KURTH2018_PARAMETERS:,} parameters (SC18 paper)",
            batch_per_gpu="2 per GPU (assumed; the paper's local batch was not found)",
        ),
    )


PRESETS = {
    "summit-kurth2018": (SUMMIT, summit_kurth2018, 4560),
    "h100-kurth2018": (H100_NODE, None, 4000),
}

PAPER = dict(gpus=27360, efficiency_fp32=0.907, sustained_fp32=325.8e15, sustained_fp16=999.0e15, peak_fp16=1.13e18)


def h100_kurth2018(rate_per_gpu, precision="bf16", jitter_cv=0.0, gradient_lag=0):
    """kurth2018 at 768 x 1152 on H100s: ``rate_per_gpu`` measured (``climseg bench step``) or given."""
    return Workload(
        f"kurth2018 {precision}",
        KURTH2018_FLOPS,
        2,
        2 * KURTH2018_PARAMETERS,
        rate_per_gpu,
        jitter_cv=jitter_cv,
        gradient_lag=gradient_lag,
        sources=dict(rate_per_gpu="given (see the command line)"),
    )
