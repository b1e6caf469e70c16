"""Triton's own specialization of a kernel launch, for a GPU that is not there.

``kernel[grid](*args, **kwargs)`` binds the arguments with a function Triton generates from the
kernel's signature (``triton.runtime.jit.create_function_from_signature``), which decides per
argument its type, whether it is divisible by 16 (``tt.divisibility``) and whether an integer
equal to 1 becomes a constant; ``JITFunction._pack_args`` then turns that into the signature,
constants, attributes and options that ``triton.compile`` receives. No public API does this
for another GPU, so :func:`specialize` calls those two directly: it is the one place in climseg
that uses Triton's private binder, and it says so loudly (naming the Triton version and what
changed) when a Triton release changes it. ``tests/test_triton_binder.py`` checks it on every
run.
"""

SUPPORTED = "3.6 to 3.9"


def _changed(what, exc=None):
    import triton

    reason = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return RuntimeError(
        f"Triton {triton.__version__}: its private JIT binder changed or refused the launch: "
        f"{what}{reason}; climseg.verify.binder.specialize knows the binder of Triton {SUPPORTED}"
    )


def specialize(fn, arch, args, kwargs, config):
    """Triton's own specialization of ``fn[grid](*args, **kwargs, **config)`` for ``sm_<arch>``:
    ``(signature, constexprs, attrs, options)``, what ``JITFunction.run`` hands to
    ``triton.compile``. ``signature`` maps every parameter name to its type (``"*bf16"``,
    ``"i32"``, ``"constexpr"``); ``constexprs`` maps parameter paths (tuples) to constant values;
    ``attrs`` maps paths to attribute lists such as ``[["tt.divisibility", 16]]``; ``options``
    is the backend's options object (``num_warps``, ``num_stages``, ...).

    Raises RuntimeError naming the Triton version when the binder is not what this function
    knows."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    try:
        from triton.runtime.jit import create_function_from_signature
    except ImportError as exc:
        raise _changed("triton.runtime.jit.create_function_from_signature is gone", exc) from exc
    if not callable(getattr(fn, "_pack_args", None)):
        raise _changed("JITFunction._pack_args is gone")
    backend = make_backend(GPUTarget("cuda", arch, 32))
    kw = dict(kwargs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages, debug=False)
    try:
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kw)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _changed(
            "create_function_from_signature(signature, params, backend)(*args, **kwargs) no longer "
            "gives (bound arguments, specialization, options)",
            exc,
        ) from exc
    try:
        options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, specialization, options)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _changed(
            "JITFunction._pack_args(backend, kwargs, bound, specialization, options) no longer gives "
            "(options, signature, constexprs, attrs)",
            exc,
        ) from exc
    if not (isinstance(signature, dict) and isinstance(constexprs, dict) and isinstance(attrs, dict)):
        raise _changed(
            f"_pack_args gave {type(signature).__name__}, {type(constexprs).__name__}, "
            f"{type(attrs).__name__} where dicts were expected"
        )
    if list(signature) != list(fn.arg_names):
        raise _changed("the signature no longer names every parameter in order")
    return signature, constexprs, attrs, options
