"""The climseg checkpoint file: what a trained network is, and how it is read and written.

A checkpoint is a ``torch.save`` dict (loadable with ``weights_only=True``):

* ``format``/``version``; ``model``: {config, in_channels, num_classes, norm, state_dict, and optionally
  options: the network's further keyword arguments, e.g. CGNet's blocks_stage3};
* ``data``: {channels, normalization, shift, scale} so that inference
  normalises inputs exactly as training did;
* ``train`` (written by :mod:`climseg.train`, absent from weights-only files): the options,
  optimizer, scheduler, scaler and RNG states and the progress, so that ``--resume`` continues
  exactly.

The file format lives here, beside the networks, so that inference (:mod:`climseg.predict`)
and the converters (:mod:`climseg.data.checkpoints`) read checkpoints without importing the
training code. Files are written to a temporary name and renamed, so a checkpoint on disk is
always complete.
"""

import os

import torch

from climseg.errors import CheckpointError, first_line
from climseg.models import build_network
from climseg.output import atomic_path, output_error

FORMAT = "climseg-checkpoint"
VERSION = 1


def save_checkpoint(path, payload):
    payload = dict(payload, format=FORMAT, version=VERSION)
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError
            raise output_error(path, exc) from None


def load_checkpoint(path):
    """Read and check a climseg checkpoint (a file, or a run folder holding ``last.pt``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes; a copy cut short, e.g. on a full disk?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle or truncated file: many exception types
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a climseg checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer climseg (format version {ckpt['version']})")
    for key in ("model", "data"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks its {key!r} section")
    ckpt["path"] = path
    return ckpt


def build_model(ckpt, device="cpu"):
    """The network (DeepLabV3Plus or CGNet) a checkpoint describes, with its weights loaded."""
    spec = ckpt["model"]
    model = build_network(
        spec["config"],
        in_channels=spec["in_channels"],
        num_classes=spec["num_classes"],
        norm=spec.get("norm", "batch"),
        **spec.get("options", {}),
    )
    load_model_state(model, spec["state_dict"], ckpt.get("path", "checkpoint"), spec["config"])
    return model.to(device)


def load_model_state(model, state_dict, where, config_name):
    """Load weights, turning a mismatch into one clear line."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        first = first_line(lines[1] if len(lines) > 1 else exc)
        raise CheckpointError(f"{where}: weights do not fit the {config_name} model ({first})") from None
