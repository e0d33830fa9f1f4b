"""Images as datasets store them, and as models take them: one layout rule for the whole package.

Stored images are uint8 arrays, channels last: N x H x W x C (or one
H x W x C image), C = 3, or C = 1 for grey. Models take float tensors,
channels first, in [0, 1]: N x C x H x W. The rule `as_model_input` follows:

* a NumPy array is always channels last, whatever its dtype: uint8 is scaled
  by 1/255, a float array is taken as already in [0, 1];
* a torch tensor is already in the model's layout when it is floating point
  (N x C x H x W, or one C x H x W); a uint8 tensor is stored images moved to
  torch, channels last, and is scaled and permuted like the array.

`as_rgb` and `fit_images` are the one place where grey images become RGB and
images of another size become the model's size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_model_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Images in the package's stored layout (see the module docstring) -> float N x C x H x W on `device`."""
    if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
        x = images.float()
        return (x[None] if x.ndim == 3 else x).to(device)
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim == 2:  # one grey image without a channel axis
        t = t[..., None]
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected N x H x W x C images, got shape {tuple(t.shape)}")
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        # Page-locked memory lets the copy overlap the previous step's kernels.
        t = t.pin_memory().to(device, non_blocking=True)
    t = t.to(device).permute(0, 3, 1, 2)
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


def as_rgb(images: np.ndarray) -> np.ndarray:
    """Channels-last images with 1 channel -> the same grey in 3; 3-channel images unchanged (RGBA loses alpha)."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    if images.shape[-1] == 4:
        return np.ascontiguousarray(images[..., :3])
    if images.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels last, got shape {images.shape}")
    return images


def crop_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 H x W x C (or N x H x W x C) -> centre-cropped to the target's aspect, resized to `size` (h, w).

    Antialiased bilinear, so a large photo is averaged down rather than
    sampled; the crop keeps what the centre of the photo shows undistorted.
    """
    single = images.ndim == 3
    batch = images[None] if single else images
    th, tw = int(size[0]), int(size[1])
    h, w = batch.shape[1:3]
    scale = min(h / th, w / tw)
    ch, cw = max(1, round(th * scale)), max(1, round(tw * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = batch[:, top:top + ch, left:left + cw]
    if crop.shape[1:3] != (th, tw):
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        crop = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.ascontiguousarray(crop)
    return out[0] if single else out


def fit_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 N x H x W x C (or one H x W x C) -> RGB at size x size: what a model built for `size` accepts."""
    images = as_rgb(images)
    return images if images.shape[-3:-1] == (size, size) else crop_resize(images, (size, size))
