"""A torchvision-compatible ResNet trunk, initialised from a checkpoint the user already has.

Cowley et al. (2026) feed their ensemble from an ImageNet ResNet50 cut after
conv4 (torchvision's `layer3`). We never download weights, and torchvision's
wheels are tied to one torch build, so we rebuild the architecture ourselves
with torchvision's parameter names (stable since torchvision 0.2): a state
dict saved from `torchvision.models.resnet50()` (or 18/34/101/152, wide or
ResNeXt variants) loads here as it is. The layout is read off the
checkpoint's tensor shapes, so no model name has to be given.

Checkpoints are read without unpickling arbitrary objects: `.safetensors`
directly, `.pth`/`.pt` with `torch.load(weights_only=True)`.

Two ways to put the trunk into the teacher:
  * stem "pixels": the paper's teacher. Images are ImageNet-normalised and go
    through the checkpoint's own stem (7x7 conv, BN, max-pool) and stages.
  * stem "vone": VOneNet's recipe (Dapello et al. 2020). The VOneBlock replaces
    the stem; a trained 1x1 conv maps its channels to what `layer1` expects.
    Both have stride 4, so the stages see maps of the size they were trained on.
"""
from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from compactvision.errors import DataError
from compactvision.hashing import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ("layer1", "layer2", "layer3", "layer4")
STEMS = ("pixels", "vone")
#: Where the paper cuts the trunk: conv4 in the ResNet paper's naming.
DEFAULT_STAGE = "layer3"


@dataclass(frozen=True)
class StageSpec:
    """One ResNet stage: `blocks` residual blocks of inner `width`, `out` channels, `groups` in the 3x3 conv."""

    blocks: int
    width: int
    out: int
    groups: int = 1


@dataclass(frozen=True)
class ResNetSpec:
    """Everything needed to rebuild a torchvision ResNet's layout (not its weights)."""

    block: str  # "basic" (ResNet18/34) or "bottleneck" (ResNet50 and up)
    stem_width: int
    stages: tuple[StageSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ResNetSpec":
        return cls(str(d["block"]), int(d["stem_width"]), tuple(StageSpec(**s) for s in d["stages"]))

    @classmethod
    def standard(cls, name: str) -> "ResNetSpec":
        """The layouts of torchvision's resnet18 ... resnet152 (used to check ours against theirs)."""
        blocks = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
                  "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
        if name not in blocks:
            raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(blocks)}")
        bottleneck = name not in ("resnet18", "resnet34")
        expansion = 4 if bottleneck else 1
        stages = tuple(StageSpec(n, 64 * 2 ** i, 64 * 2 ** i * expansion) for i, n in enumerate(blocks[name]))
        return cls("bottleneck" if bottleneck else "basic", 64, stages)


class ResNetBlock(nn.Module):
    """torchvision's BasicBlock / Bottleneck (stride on the 3x3 conv, "v1.5"), without in-place ops."""

    def __init__(self, block: str, c_in: int, stage: StageSpec, stride: int) -> None:
        super().__init__()
        w, out = stage.width, stage.out
        if block == "bottleneck":
            self.conv1 = nn.Conv2d(c_in, w, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.conv2 = nn.Conv2d(w, w, 3, stride=stride, padding=1, groups=stage.groups, bias=False)
            self.bn2 = nn.BatchNorm2d(w)
            self.conv3 = nn.Conv2d(w, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
        elif block == "basic":
            self.conv1 = nn.Conv2d(c_in, w, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.conv2 = nn.Conv2d(w, out, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)
        else:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        self.bottleneck = block == "bottleneck"
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.bottleneck:
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetTrunk(nn.Module):
    """A ResNet cut after stage `stop_at`, with or without its pixel stem.

    With the stem, input is N x 3 x H x W in [0, 1] (ImageNet-normalised
    inside); without it, input is what `layer1` expects (`spec.stem_width`
    channels at stride 4).
    """

    def __init__(self, spec: ResNetSpec, stop_at: str = DEFAULT_STAGE, stem: bool = True) -> None:
        super().__init__()
        if stop_at not in STAGES[: len(spec.stages)]:
            raise ValueError(f"stop_at must be one of {list(STAGES[: len(spec.stages)])}, got {stop_at!r}")
        self.spec, self.stop_at, self.has_stem = spec, stop_at, stem
        if stem:
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
            self.conv1 = nn.Conv2d(3, spec.stem_width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(spec.stem_width)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.n_stages = STAGES.index(stop_at) + 1
        c = spec.stem_width
        for i, stage in enumerate(spec.stages[: self.n_stages]):
            blocks = [ResNetBlock(spec.block, c if j == 0 else stage.out, stage, (1 if i == 0 else 2) if j == 0 else 1)
                      for j in range(stage.blocks)]
            self.add_module(STAGES[i], nn.Sequential(*blocks))
            c = stage.out
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_stem:
            x = self.maxpool(F.relu(self.bn1(self.conv1((x - self.mean) / self.std))))
        for name in STAGES[: self.n_stages]:
            x = getattr(self, name)(x)
        return x

    def output_size(self, size: int) -> int:
        """Side of the output map for an input of side `size` (pixels with the stem, else layer1's input)."""
        if self.has_stem:
            size = (size - 1) // 2 + 1  # 7x7 conv, stride 2, padding 3
            size = (size - 1) // 2 + 1  # 3x3 max-pool, stride 2, padding 1
        for _ in range(1, self.n_stages):
            size = (size - 1) // 2 + 1  # each later stage halves (3x3, stride 2, padding 1)
        return size


# -------------------------------------------------------------- checkpoints
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
_MARKER = "layer1.0.conv1.weight"


def read_resnet_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ResNet tensors of a checkpoint, with torchvision's names.

    Accepts a bare state dict or one wrapped in a training checkpoint
    ({"state_dict": ...}, {"model": ...}), with any key prefix ("module."
    from DataParallel, "model." or "backbone." from other codebases; the
    shortest wins when there are several). Anything that is not plain
    tensors, or not a ResNet, raises a DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such checkpoint file", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"not a readable safetensors file ({e})", path) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise DataError("the checkpoint holds Python objects besides tensors, and we only read plain weights "
                            f"(torch.load weights_only=True refused it: {str(e).splitlines()[0][:200]}). "
                            "Save the model's state_dict() instead.", path) from None
        except Exception as e:  # a corrupt file can fail anywhere in torch's reader (IndexError, EOFError, ...)
            raise DataError(f"not a readable torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                            path) from None
    for _ in range(3):  # unwrap {"state_dict": {...}} and the like
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise DataError(f"expected a state dict (name -> tensor), found {type(obj).__name__}", path)
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    prefixes = sorted({k[: -len(_MARKER)] for k in tensors if k.endswith(_MARKER)}, key=lambda p: (len(p), p))
    if not prefixes:
        raise DataError(f"no ResNet weights found (expected torchvision names such as {_MARKER!r}; "
                        f"the file has e.g. {sorted(tensors)[:3]})", path)
    prefix = prefixes[0]
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DataError(f"the checkpoint has NaN or infinite values in {bad[:5]}", path)
    return state


def infer_resnet_spec(state: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> ResNetSpec:
    """Read the block type, depth and widths off a torchvision-named state dict's shapes."""
    bottleneck = "layer1.0.conv3.weight" in state
    if "layer1.0.conv2.weight" not in state:
        raise DataError("not a ResNet: layer1.0.conv2.weight is missing", source)
    stages = []
    for name in STAGES:
        n = 0
        while f"{name}.{n}.conv1.weight" in state:
            n += 1
        if n == 0:
            break
        try:
            width = int(state[f"{name}.0.conv1.weight"].shape[0])
            conv2 = state[f"{name}.0.conv2.weight"]
            last = state[f"{name}.0.conv3.weight" if bottleneck else f"{name}.0.conv2.weight"]
        except KeyError as e:
            raise DataError(f"not a complete ResNet stage: {e.args[0]} is missing", source) from None
        groups = width // int(conv2.shape[1]) if bottleneck else 1
        stages.append(StageSpec(n, width, int(last.shape[0]), max(groups, 1)))
    stem = int(state["conv1.weight"].shape[0]) if "conv1.weight" in state else int(state["layer1.0.conv1.weight"].shape[1])
    return ResNetSpec("bottleneck" if bottleneck else "basic", stem, tuple(stages))


def load_trunk_weights(trunk: ResNetTrunk, state: Mapping[str, torch.Tensor], source: str | Path = "checkpoint") -> None:
    """Copy the checkpoint's tensors into `trunk` (everything it has; layer4 and fc may be left over)."""
    wanted = trunk.state_dict()
    # Checkpoints older than torch 0.4 (e.g. torchvision's original resnet50 file) have no BN batch counters.
    optional = {k for k in wanted if k.endswith("num_batches_tracked") and k not in state}
    missing = [k for k in wanted if k not in state and k not in optional]
    if missing:
        raise DataError(f"the checkpoint lacks {len(missing)} tensors the trunk needs, e.g. {missing[:3]}", source)
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in wanted.items()
             if k not in optional and state[k].shape != v.shape]
    if wrong:
        raise DataError(f"checkpoint shapes do not fit the trunk: {wrong[:3]}", source)
    trunk.load_state_dict({k: v if k in optional else state[k].to(v.dtype) for k, v in wanted.items()}, strict=True)


def backbone_from_checkpoint(path: str | Path, stop_at: str = DEFAULT_STAGE, stem: str = "pixels",
                             trainable: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The teacher-config entry describing a checkpoint's trunk, and the checkpoint's tensors.

    The entry holds the layout, the cut, the stem mode and the file's name and
    sha256 (provenance); the weights themselves end up in the teacher's own
    safetensors file, so a trained run never needs the checkpoint again.
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")  # before reading a large file
    path = Path(path)
    state = read_resnet_checkpoint(path)
    spec = infer_resnet_spec(state, path)
    if stop_at not in STAGES[: len(spec.stages)]:
        raise DataError(f"the checkpoint has stages {list(STAGES[: len(spec.stages)])}; cannot cut at {stop_at!r}", path)
    if stem == "pixels" and "conv1.weight" not in state:
        raise DataError("the checkpoint has no stem (conv1.weight); use the VOneBlock stem instead", path)
    return backbone_entry(spec, stop_at, stem, trainable, {"name": path.name, "sha256": sha256_file(path)}), state


def backbone_entry(spec: ResNetSpec, stop_at: str = DEFAULT_STAGE, stem: str = "pixels", trainable: bool = False,
                   source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `TeacherConfig.backbone` entry: layout, cut, stem mode, and where the weights came from."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    return {"spec": spec.to_dict(), "stop_at": stop_at, "stem": stem, "trainable": bool(trainable),
            "source": dict(source or {"name": "untrained (random initialisation)"})}
