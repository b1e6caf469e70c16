"""The convolution layers whose kernels the static check compiles (and ``climseg bench atrous``
times): the real dilated layers of the kurth2018 and deepcam networks at a 768 x 1152 input,
batch 2, the fused ASPP blocks, or layers given on the command line.

A case is ``(name, N, Cin, Cout, H, W, kernel sizes, dilations, groups)``, one kernel size and
dilation per branch of a fused launch.
"""

from climseg.errors import ConfigError


def atrous_layers():
    """(name, N, Cin, Cout, H, W, kernel, dilation, groups) at a 768 x 1152 input, batch 2."""
    rows = []
    for d in (12, 24, 36):
        rows.append((f"kurth2018 ASPP 3x3 d{d}", 2, 2048, 256, 96, 144, 3, d, 1))
    for d in (6, 12, 18):
        rows.append((f"deepcam ASPP 3x3 d{d}", 2, 2048, 256, 48, 72, 3, d, 1))
    for d in (1, 2):
        rows.append((f"deepcam middle-flow depthwise d{d}", 2, 728, 728, 48, 72, 3, d, 728))
    rows.append(("kurth2018 decoder 3x3 384->256 full res", 2, 384, 256, 768, 1152, 3, 1, 1))
    return rows


def layer_cases():
    """The cases of :func:`atrous_layers` (one conv each) and the fused ASPP blocks (a 1x1 and
    three dilated 3x3 branches in one launch), all at a 768 x 1152 input, batch 2."""
    cases = [
        (name, n, cin, cout, h, w, (k,), (d,), groups) for name, n, cin, cout, h, w, k, d, groups in atrous_layers()
    ]
    cases.append(("kurth2018 ASPP block (fused)", 2, 2048, 256, 96, 144, (1, 3, 3, 3), (1, 12, 24, 36), 1))
    cases.append(("deepcam ASPP block (fused)", 2, 2048, 256, 48, 72, (1, 3, 3, 3), (1, 6, 12, 18), 1))
    return cases


def parse_layer(text):
    """A layer given on the command line: ``name:N,Cin,Cout,H,W,k,dilation,groups``."""
    name, _, numbers = text.rpartition(":")
    try:
        n, cin, cout, h, w, k, d, groups = (int(v) for v in numbers.split(","))
    except ValueError:
        raise ConfigError(f"--layer {text!r}: expected name:N,Cin,Cout,H,W,k,dilation,groups (integers)") from None
    if min(n, cin, cout, h, w, k, d, groups) < 1 or cin % groups or (groups > 1 and (groups != cin or cout != cin)):
        raise ConfigError(f"--layer {text!r}: sizes must be positive; groups is 1 or Cin = Cout (depthwise)")
    return (name or f"{n}x{cin}x{h}x{w}->{cout} {k}x{k} d{d}", n, cin, cout, h, w, (k,), (d,), groups)
