"""Compute per prediction: the "Green AI" figure of a model, in multiply-accumulates.

Counting the real forward pass (FLOPs / 2 under torch's FlopCounterMode)
covers any architecture — the teacher's ensemble and readouts, the VOneBlock's
grouped conv, a pruned student — with no per-layer formulae to keep in sync.
"""
from __future__ import annotations

import torch

from compactvision.runtime import model_device


def model_macs(model: torch.nn.Module, image_size: int | tuple[int, int] = 112) -> int:
    """Multiply-accumulates for one image through `model`, counted by running it once."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    # the probe image lives where the model does: a teacher just trained on a GPU is counted there
    x = torch.zeros(1, 3, h, w, device=model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)
