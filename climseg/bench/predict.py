"""``climseg bench predict``: end-to-end inference speed against the ways people run these networks,
and the agreement of every precision with fp32.

1. Speed, per network (``--networks``, default deepcam and cgnet; weights from ``--seed``: the
   speed does not depend on them) over a generated series (``climseg generate --timesteps``,
   768 x 1152 by default, netCDF): steps per second of

   * ``climseg predict`` (:func:`climseg.predict.predict`, masks and summary, no maps) with its
     breakdown: read, compute, write, and how long the network waited for the reader; again with
     maps (``--maps``);
   * (a) the reference projects' loop: one step at a time, read with netCDF4 as they read with
     xarray (every variable of the step), normalised in NumPy, the network as trained in fp32
     and NCHW, masks written per file;
   * (b) the best plain PyTorch loop: the same, the network in the precision ``auto`` picks
     (bf16 where the hardware computes it natively, else fp32) and channels_last;
   * (c) climseg's prepared network alone on batches already in memory: the ceiling.

2. Agreement (``--checkpoint``, a network trained by ``climseg train``; default: the random
   networks above, flagged as such): the share of pixels whose class equals fp32's, for each
   precision this machine runs (bf16; fp16 on GPUs; int8 with torchao), over a generated series
   of the checkpoint's own grid size (``--agreement-height``/``--agreement-width``).

Results go to ``benchmarks/results/predict-<device>-<date>.{json,md}`` (or ``--json``) with the
machine, the load average before and after, the date and the command.
"""

import argparse
import datetime
import glob
import os
import platform
import tempfile
import time

import numpy as np
import torch


def _series(folder, steps, height, width, seed):
    from climseg.data.timeseries import generate_timeseries

    os.makedirs(folder, exist_ok=True)
    generate_timeseries(folder, steps, 3.0, height, width, seed, workers=1, progress=False)
    return sorted(glob.glob(os.path.join(folder, "*.nc")))


def random_checkpoint(path, network, files, seed=0):
    """A climseg checkpoint of ``network`` with weights from ``seed`` and z-score normalisation
    from the first step of ``files`` (a speed benchmark needs no trained weights)."""
    from climseg.constants import CHANNELS
    from climseg.data.netcdf import open_netcdf, read_netcdf_step
    from climseg.models import build_network
    from climseg.models.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = build_network(network, in_channels=len(CHANNELS), num_classes=3)
    info = open_netcdf(files[0], CHANNELS)
    step = read_netcdf_step(info, 0).reshape(-1, len(CHANNELS)).astype(np.float64)
    mean, std = step.mean(0), step.std(0) + 1e-6
    data = dict(
        channels=list(CHANNELS),
        normalization="zscore",
        shift=torch.tensor(mean, dtype=torch.float32),
        scale=torch.tensor(1.0 / std, dtype=torch.float32),
    )
    save_checkpoint(
        path,
        dict(
            model=dict(
                config=network, in_channels=len(CHANNELS), num_classes=3, norm="batch", state_dict=net.state_dict()
            ),
            data=data,
        ),
    )
    return path


def plain_loop(ckpt_path, files, out, dtype=torch.float32, channels_last=False, device="cpu"):
    """The reference projects' inference loop (a) or its best plain-PyTorch form (b): the network as
    trained, one step at a time, netCDF4 reads, masks written per file. Returns seconds and steps."""
    import netCDF4

    from climseg.models.checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    channels = list(ckpt["data"]["channels"])
    shift = ckpt["data"]["shift"].numpy().reshape(1, 1, -1)
    scale = ckpt["data"]["scale"].numpy().reshape(1, 1, -1)
    model = build_model(ckpt, device).eval().to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    os.makedirs(out, exist_ok=True)
    steps, start = 0, time.perf_counter()
    with torch.inference_mode():
        for path in files:
            masks = []
            with netCDF4.Dataset(path) as ds:
                for t in range(ds.dimensions["time"].size):
                    x = np.stack([np.asarray(ds.variables[c][t], np.float32) for c in channels], -1)
                    x = torch.from_numpy((x - shift) * scale).permute(2, 0, 1)[None].contiguous(memory_format=fmt)
                    logits = model(x.to(device=device, dtype=dtype))
                    masks.append(logits.argmax(1)[0].to(torch.uint8).cpu().numpy())
                    steps += 1
            with netCDF4.Dataset(os.path.join(out, os.path.basename(path)), "w") as m:
                m.createDimension("time", None)
                m.createDimension("lat", masks[0].shape[0])
                m.createDimension("lon", masks[0].shape[1])
                m.createVariable("mask", "u1", ("time", "lat", "lon"), zlib=True)[:] = np.stack(masks)
    return time.perf_counter() - start, steps


def forward_alone(ckpt_path, files, precision, batch_size, device, compile=False):
    """Our prepared network on batches already in memory (the ceiling): seconds and steps."""
    from climseg.data.checkpoints import load_any_checkpoint
    from climseg.predict import calibration_batches, open_inputs, prepare_network

    ckpt = load_any_checkpoint(ckpt_path)
    sources = [s for _, s in open_inputs(files, ckpt["data"]["channels"])]
    batches = calibration_batches(sources, ckpt["data"]["shift"], ckpt["data"]["scale"], steps=10**9)
    calibration = calibration_batches(sources, ckpt["data"]["shift"], ckpt["data"]["scale"])
    network = prepare_network(ckpt, device, precision, compile, calibration, log=lambda *a: None)
    m = network.input_multiple
    shape = (batch_size, len(ckpt["data"]["channels"])) + tuple(-(-n // m) * m for n in sources[0].shape)
    xs = [
        b.to(device=device, dtype=network.input_dtype).contiguous(memory_format=torch.channels_last)
        for b in batches(shape, network.input_multiple)
    ]
    network.segment(xs[0])  # the first call: compilation, quantization, oneDNN's set-up
    _sync(device)
    start = time.perf_counter()
    for x in xs:
        network.segment(x)
    _sync(device)
    return time.perf_counter() - start, sum(len(x) for x in xs)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def ours(ckpt_path, files, out, precision, batch_size, maps, compile=False):
    from climseg.predict import predict

    summary = predict(
        ckpt_path,
        files,
        out,
        maps=maps,
        progress=False,
        log=lambda *a: None,
        precision=precision,
        batch_size=batch_size,
        compile=compile,
    )
    return summary["performance"]


def agreement(ckpt_path, files, folder, precisions, batch_size):
    """{precision: share of pixels equal to fp32's masks} (and the fp32 masks' class shares)."""
    from climseg.data.masks import MaskReader, open_mask_series

    def masks(precision):
        out = os.path.join(folder, f"agree-{precision}")
        ours(ckpt_path, files, out, precision, batch_size, maps=False)
        series = open_mask_series(sorted(glob.glob(os.path.join(out, "*_mask.nc"))))
        with MaskReader(series) as reader:
            return np.stack([reader.read(k) for k in range(series.hours.size)])

    reference = masks("fp32")
    result = dict(fp32_fractions=[float(np.mean(reference == c)) for c in range(3)])
    for p in precisions:
        try:
            result[p] = float(np.mean(masks(p) == reference))
        except Exception as exc:  # noqa: BLE001 - a precision this machine cannot run is reported, not fatal
            result[p] = f"not run: {str(exc).splitlines()[0]}"
    return result


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    from climseg.perf.hardware import choose_precision, cpu_isa

    p = argparse.ArgumentParser(prog="climseg bench predict", description=__doc__.splitlines()[0])
    p.add_argument("--networks", default="deepcam,cgnet", help="comma-separated networks (default deepcam,cgnet)")
    p.add_argument("--steps", type=int, default=8, help="time steps of the timed series (default 8)")
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--width", type=int, default=1152)
    p.add_argument(
        "--batch-size",
        type=lambda text: text if text == "auto" else int(text),
        default="auto",
        help="climseg predict's batch, auto (as climseg predict chooses it by device and grid) or N (default auto)",
    )
    p.add_argument("--precision", default="auto", help="climseg predict's precision (default auto)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--no-maps", action="store_true", help="skip the run with maps")
    p.add_argument("--no-references", action="store_true", help="skip loops (a) and (b)")
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint for the agreement (default: random)")
    p.add_argument("--agreement-steps", type=int, default=16)
    p.add_argument("--agreement-height", type=int, default=192)
    p.add_argument("--agreement-width", type=int, default=288)
    p.add_argument(
        "--agreement-precisions",
        default="bf16,fp16,int8",
        help="precisions compared with fp32 where this device runs them (fp16: GPUs, int8: CPUs; default all three)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/predict-<device>-<date>.json)")
    args = p.parse_args(argv)
    from climseg.perf.hardware import resolve_device

    device = resolve_device(args.device)
    best, why = choose_precision("auto", device)
    if args.batch_size == "auto":
        from climseg.predict import auto_batch_size

        args.batch_size = auto_batch_size(device, [(args.height, args.width)])
    result = dict(
        benchmark="predict",
        date=datetime.date.today().isoformat(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_isa()})"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(device),
        load_before=_load(),
        command=os.environ.get("CLIMSEG_BENCH_COMMAND", "python -m climseg.bench.predict"),
        options=vars(args),
        auto_precision=f"{best} ({why})",
        networks={},
    )
    runs = {"bf16": True, "fp16": device.type == "cuda", "int8": device.type == "cpu"}
    precisions = [q for q in args.agreement_precisions.split(",") if runs.get(q.strip())]
    with tempfile.TemporaryDirectory() as folder:
        files = _series(os.path.join(folder, "series"), args.steps, args.height, args.width, args.seed)
        for network in [n for n in args.networks.split(",") if n.strip()]:
            ckpt = random_checkpoint(os.path.join(folder, f"{network}.pt"), network, files, args.seed)
            rows = {}
            perf = ours(ckpt, files, os.path.join(folder, f"{network}-ours"), args.precision, args.batch_size, False)
            rows["climseg predict"] = _row(perf["seconds"], perf["steps"], perf)
            if not args.no_maps:
                perf = ours(ckpt, files, os.path.join(folder, f"{network}-maps"), args.precision, args.batch_size, True)
                rows["climseg predict, with maps"] = _row(perf["seconds"], perf["steps"], perf)
            if not args.no_references:
                rows["(a) reference loop, fp32 NCHW"] = _row(
                    *plain_loop(ckpt, files, os.path.join(folder, "a"), device=device)
                )
                rows[f"(b) plain PyTorch, {best} channels_last"] = _row(
                    *plain_loop(ckpt, files, os.path.join(folder, "b"), _dtype(best), True, device)
                )
            precision = perf["precision"]
            rows[f"(c) forward alone, {precision}"] = _row(
                *forward_alone(ckpt, files, precision, args.batch_size, device)
            )
            result["networks"][network] = rows
            print(
                f"{network}: " + "; ".join(f"{k} {v['steps_per_second']:.3f} steps/s" for k, v in rows.items()),
                flush=True,
            )
        if args.checkpoint:
            agree_files = files if (args.agreement_height, args.agreement_width) == (args.height, args.width) else None
            agree_files = agree_files or _series(
                os.path.join(folder, "agree-series"),
                args.agreement_steps,
                args.agreement_height,
                args.agreement_width,
                args.seed + 1,
            )
            result["agreement"] = dict(
                checkpoint=args.checkpoint,
                steps=args.agreement_steps,
                grid=f"{args.agreement_height}x{args.agreement_width}",
                **agreement(args.checkpoint, agree_files, folder, precisions, args.batch_size),
            )
        else:
            network = args.networks.split(",")[0]
            result["agreement"] = dict(
                checkpoint=f"random {network} weights (no --checkpoint: not a trained network)",
                steps=args.steps,
                grid=f"{args.height}x{args.width}",
                **agreement(os.path.join(folder, f"{network}.pt"), files, folder, precisions, args.batch_size),
            )
        print(f"agreement with fp32: {result['agreement']}", flush=True)
    result["load_after"] = _load()
    path = args.json or _default_path(result)
    from climseg.bench.predict_report import write_report

    write_report(path, result)
    print(f"climseg: results in {path} and {os.path.splitext(path)[0]}.md")
    return 0


def _dtype(precision):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _row(seconds, steps, perf=None):
    row = dict(seconds=round(seconds, 3), steps=steps, steps_per_second=round(steps / seconds, 4))
    if perf is not None:
        row["stages"] = perf["stages"]
        row["precision"] = perf["precision"]
    return row


def _default_path(result):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "benchmarks", "results")
    if not os.path.isdir(folder):
        folder = os.path.join(os.getcwd(), "climseg-bench-results")
    kind = "cuda" if result["device"].startswith("cuda") else "cpu"
    return os.path.join(folder, f"predict-{kind}-{result['date']}.json")


if __name__ == "__main__":
    raise SystemExit(main())
