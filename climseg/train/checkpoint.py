"""Checkpoints: everything needed to continue a run exactly, or to run inference.

A checkpoint is a ``torch.save`` dict (loadable with ``weights_only=True``):

* ``format``/``version``; ``model``: {config, in_channels, num_classes, norm, state_dict, and optionally
  options: the network's further keyword arguments, e.g. CGNet's blocks_stage3};
* ``data``: {channels, normalization, shift, scale} so that inference
  normalises inputs exactly as training did;
* ``train``: the TrainConfig options, ``optimizer``, ``scheduler``, ``scaler``
  states, ``rng`` (torch, CUDA, numpy, python), ``progress`` {epoch,
  batch_in_epoch, step, best_mean_iou}, and the last ``metrics``.

The file format (reading, writing, building the network) is
:mod:`climseg.models.checkpoint`; this module adds the random-number states a run resumes.
"""
import random

import numpy as np
import torch

from climseg.models.checkpoint import FORMAT, VERSION, build_model, load_checkpoint, load_model_state, save_checkpoint

__all__ = ["FORMAT", "VERSION", "build_model", "load_checkpoint", "load_model_state", "save_checkpoint",
           "rng_state", "set_rng_state"]


def rng_state():
    state = dict(torch=torch.get_rng_state(), python=_python_state(), numpy=_numpy_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
