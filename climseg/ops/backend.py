"""Backend selection for the fused ops: ``"auto" | "triton" | "cuda" | "torch"``.

Each op registers the fast implementations it has, with a function that says
whether one can run on a given tensor (and why not), and optionally one that says
why ``"auto"`` should prefer it for that tensor (e.g. the CUDA atrous kernels on GPUs
below compute capability 8.0, where Triton has no tensor cores). ``"auto"`` takes the
first preferred implementation that can run, else the first that can, for CUDA
tensors; CPU tensors take the PyTorch reference (a named
backend may still run on them: ``"triton"`` in Triton's interpreter, ``"cuda"`` in
the CPU emulation of the CUDA kernels, both for tests). The default comes from the
environment variable ``CLIMSEG_BACKEND`` (unset: ``"auto"``). ``climseg info``
prints :func:`describe`.
"""

import os

from climseg.errors import ConfigError

BACKENDS = ("auto", "triton", "cuda", "torch")
ENV_VAR = "CLIMSEG_BACKEND"

# op name -> list of (backend name, probe(tensor) -> (ok: bool, reason: str))
_REGISTRY = {}
# (op, backend) -> prefer(tensor) -> why auto takes this backend first for the tensor ('' = not preferred)
_PREFER = {}


def register(op, backend, probe, prefer=None):
    """Declare that ``op`` has a ``backend`` implementation; ``probe(tensor)`` says if it runs;
    ``prefer(tensor)``, when given, says why ``"auto"`` should try it before the others ('' = no)."""
    if backend not in BACKENDS[1:3]:
        raise ValueError(f"fast backends are {BACKENDS[1:3]}, not {backend!r}")
    _REGISTRY.setdefault(op, [])
    _REGISTRY[op] = [(b, p) for b, p in _REGISTRY[op] if b != backend] + [(backend, probe)]
    if prefer is not None:
        _PREFER[(op, backend)] = prefer
    else:
        _PREFER.pop((op, backend), None)


def _auto_order(op, tensor):
    """The candidates of ``op`` in the order ``"auto"`` tries them for ``tensor``: the preferred ones
    first (with why), then the rest in registration order."""
    first, rest = [], []
    for name, probe in _REGISTRY.get(op, []):
        prefer = _PREFER.get((op, name))
        why = prefer(tensor) if prefer is not None else ""
        (first if why else rest).append((name, probe, why))
    return first + rest


def default_backend():
    """The backend named by ``CLIMSEG_BACKEND``, or ``"auto"``."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ConfigError(f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def resolve(op, requested, tensor=None):
    """The backend ``op`` will use for ``tensor``: one of ``"triton" | "cuda" | "torch"``."""
    if requested in (None, "auto"):
        requested = default_backend()
    if requested not in BACKENDS:
        raise ConfigError(f"{op}: unknown backend {requested!r} (choose from {', '.join(BACKENDS)})")
    if requested == "torch":
        return "torch"
    candidates = _REGISTRY.get(op, [])
    if requested == "auto":
        if tensor is not None and tensor.device.type != "cuda":
            return "torch"  # CPU tensors take the reference (the Triton interpreter is for tests)
        for name, probe, _ in _auto_order(op, tensor):
            ok, _ = probe(tensor)
            if ok:
                return name
        return "torch"
    for name, probe in candidates:
        if name == requested:
            ok, reason = probe(tensor)
            if ok:
                return name
            raise ConfigError(f"{op}: backend {requested!r} cannot run here: {reason}")
    raise ConfigError(
        f"{op}: backend {requested!r} is not available in this build of climseg (available: torch"
        + "".join(f", {n}" for n, _ in candidates)
        + ")"
    )


_KERNEL_NAMES = {"triton": "Triton kernels", "cuda": "CUDA kernels"}


def choose(op, requested, tensor, why_not):
    """:func:`resolve`, then ask the fast path about this very input: ``why_not()`` returns ''
    when it can compute it, else the reason. Auto falls back to ``"torch"``; a backend named
    explicitly (argument or ``CLIMSEG_BACKEND``) that cannot is an error."""
    named = requested if requested not in (None, "auto") else default_backend()
    chosen = resolve(op, requested, tensor)
    if chosen == "torch":
        return chosen
    reason = why_not()
    if reason:
        if named == chosen:
            raise ConfigError(f"{op}: the {_KERNEL_NAMES[chosen]} cannot compute this: {reason}")
        return "torch"
    return chosen


def describe(ops=None):
    """Rows ``(op, backend for a CUDA tensor, backend for a CPU tensor, why)`` for ``climseg info``."""
    import torch

    rows = []
    for op in sorted(ops or _REGISTRY_OPS):
        candidates = _REGISTRY.get(op, [])
        cuda_choice, reasons = "torch", []
        cuda_ok = torch.cuda.is_available()
        probe_tensor = torch.empty(0, device="cuda") if cuda_ok else None
        order = _auto_order(op, probe_tensor) if cuda_ok else [(n, p, "") for n, p in candidates]
        for name, probe, preferred in order:
            ok, reason = probe(probe_tensor) if cuda_ok else (False, "no CUDA device")
            if ok:
                cuda_choice = name
                if preferred:
                    reasons.append(f"{name} first: {preferred}")
                break
            reasons.append(f"{name}: {reason}")
        if not candidates:
            reasons.append("PyTorch reference only")
        policies = [getattr(_PREFER.get((op, n)), "policy", "") for n, _ in candidates]
        reasons += [f"auto: {p}" for p in policies if p and not cuda_ok]
        rows.append((op, cuda_choice if cuda_ok else "-", "torch", "; ".join(reasons) or "fast path available"))
    return rows


# every op climseg defines, whether or not it has fast backends yet
_REGISTRY_OPS = {
    "atrous_conv2d",
    "aspp_conv",
    "weighted_cross_entropy_with_counts",
    "larc_adam_step",
    "lamb_step",
    "flatten_gradients",
    "unflatten_gradients",
    "normalize_input",
}
