"""The teacher: a fixed VOneBlock, trainable residual back ends, per-session factorised readouts.

Cowley et al. (2026) put an ImageNet ResNet50 trunk under 25 ensemble members
of ~2.3M parameters each. We cannot download ImageNet weights, so the front end
is a VOneBlock (a V1 model that needs no training) and every ensemble member
learns its own residual back end and readouts from the neural data. Members
differ only in their initialisation; their predictions are averaged, which is
what makes the teacher a smoother target for distillation than any one net.

Each session gets its own readout (its neurons were recorded together) and
its own response scale: the readouts predict z-scores and the teacher maps
them back to response units with the training split's per-neuron mean and
s.d., so `forward` returns predicted responses. A held-out session's readout,
fitted on a few hundred images, may be averaged with a closed-form ridge probe
of the same maps (`heldout_probe_pool`, `PooledLinearProbe`): the two err
differently, and their blend predicts better than either. It may also average
in a ridge combination of the neurons the trunk was trained on, as the teacher
predicts them (`heldout_basis_weight`, `NeuronBasis`): what the trunk learnt
V4 neurons to be, weighed by a few hundred regressors instead of thousands.

Sizes go from `tiny` (trains in seconds, for tests) through `cpu` (the
default; 8 epochs over a 20k-image twin take about 4 minutes on two cores,
`benchmarks/teacher.py --images 20000`) to `paper`
(about 60M parameters with the ensemble, as in the reference; meant for a GPU).

A user with a local torchvision ResNet checkpoint can put its trunk under the
members (`config.backbone`, see `models/backbone.py`): either on pixels, as in
the paper, or behind the VOneBlock, as in VOneNet. The trunk is frozen unless
asked otherwise, and its weights are saved with the teacher's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compactvision.artifacts import MANIFEST, atomic_write_json, load_weights, read_json, read_manifest, save_weights, verify_files
from compactvision.compute import model_macs
from compactvision.errors import ArtifactError
from compactvision.models.bank import BANK_FORMAT, StudentBank, load_bank
from compactvision.models.backbone import ResNetSpec, ResNetTrunk
from compactvision.models.readouts import (OUTPUTS, FactorisedReadout, GaussianReadout, NeuronBasis, PooledLinearProbe,
                                          Readout)
from compactvision.models.truth import TRUTH_FORMAT, TruthTeacher, load_truth
from compactvision.models.vone import DEFAULT_STRIDE, DEFAULT_VISUAL_DEGREES, VOneBlock
from compactvision.train import TrainConfig

TEACHER_DIR = "teacher"
WEIGHTS = "teacher.safetensors"
ARCHITECTURE = "architecture.json"
FORMAT = "compactvision.teacher/1"


FRONT_ENDS = ("vone", "conv")
READOUTS = ("factorised", "gaussian")


class LearnedFrontEnd(nn.Module):
    """A trained convolution standing where the VOneBlock stands: same output channels, kernel, stride and map size.

    Conv -> BatchNorm -> ReLU on the same [-1, 1] pixel scale the VOneBlock
    sees. With everything else equal, it is the control that says whether the
    fixed, V1-like front end (not the architecture around it) makes a model
    harder to break.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, image_size: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.image_size = int(kernel_size), int(stride), int(image_size)
        self.padding = self.kernel_size // 2
        self.conv = nn.Conv2d(3, channels, self.kernel_size, stride=self.stride, padding=self.padding, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def output_size(self) -> int:
        return (self.image_size + 2 * self.padding - self.kernel_size) // self.stride + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.relu(self.bn(self.conv(x * 2.0 - 1.0)))


@dataclass(frozen=True)
class TeacherConfig:
    """Architecture plus the training schedule that suits it."""

    # front end: "vone", the fixed VOneBlock; or "conv", a learned convolution of the same shape (the
    # "standard CNN" control of the robustness claim: same channels, kernel, stride, back end and budget)
    front_end: str = "vone"
    # VOneBlock front end
    n_simple: int = 48
    n_complex: int = 48
    kernel_size: int = 17
    image_size: int = 112
    visual_degrees: float = DEFAULT_VISUAL_DEGREES
    k_exc: float = 25.0
    noise: str | None = None
    # s.d. of the V1 noise in units of VOneNet's sqrt(rate + 1); on in training and at test time alike
    noise_level: float = 1.0
    sampler: str = "v1"
    # pixels between neighbouring V1 units (VOneNet's 4; the learned front end takes the same); a simple cell's
    # phase is only sampled without aliasing up to 1 / (2 * stride) cycles per pixel
    vone_stride: int = DEFAULT_STRIDE
    # back end, per ensemble member
    width: int = 48
    n_blocks: int = 1
    first_stride: int = 2
    ensemble: int = 1
    # readout: "factorised" (a spatial mask times feature weights) or "gaussian" (one learned position, Lurz 2021)
    readout: str = "factorised"
    mask_l1: float = 1e-3
    feature_l1: float = 1e-3
    # how a readout's weighted sum becomes its prediction: "linear", or "softplus" (a learned threshold and
    # floor per neuron, `Readout.respond`)
    readout_output: str = "linear"
    # a held-out session's readout on the frozen trunk (`readout_fit`): 0 chooses its penalty, and stops, on the
    # last tenth of the session's first half; k >= 2 chooses both by k-fold cross-validation over the whole first
    # half and then fits on all of it
    readout_folds: int = 0
    # a held-out session's prediction also averages in a ridge probe of the maps pooled to this many cells a side
    # (`PooledLinearProbe`, fitted in closed form on the same first half), with this weight; 0 keeps the readout alone
    heldout_probe_pool: int = 0
    heldout_probe_weight: float = 0.5
    # a held-out session's prediction also averages in, with this weight, a ridge combination of the trunk's own
    # sessions' predicted neurons (`NeuronBasis`, fitted in closed form on the same first half); 0: none
    heldout_basis_weight: float = 0.0
    # training
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 3
    # cowley protocol: the held-out (test and validation) sessions' first halves also train the trunk, with their
    # readouts, before each readout is refitted on the frozen trunk; their second halves stay unseen either way
    trunk_sees_held_out: bool = False
    # the readouts also read the shared front end's maps (pooled to the back end's grid, batch-normalised) beside
    # the back end's: what V1 already says need not pass through the back end's few channels to be read
    readout_sees_front_end: bool = False
    # GPU throughput only (the weights mean the same)
    channels_last: bool = False
    compile: bool = False
    # optional pretrained ResNet trunk (`backbone.backbone_from_checkpoint` makes this entry)
    backbone: Mapping[str, Any] | None = None

    def train_config(self, seed: int = 0, device: str | None = None, **overrides: Any) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           patience=self.patience, seed=seed, device=device, channels_last=self.channels_last,
                           compile=self.compile, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.front_end not in FRONT_ENDS:
            raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {self.front_end!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.readout_output not in OUTPUTS:
            raise ValueError(f"readout_output must be one of {OUTPUTS}, got {self.readout_output!r}")
        if self.vone_stride < 1:
            raise ValueError(f"vone_stride must be at least 1 px, got {self.vone_stride}")
        if self.ensemble < 1:
            raise ValueError(f"an ensemble needs at least one member, got {self.ensemble}")
        if self.readout_folds == 1 or self.readout_folds < 0:
            raise ValueError(f"readout_folds must be 0 (one held-back set) or at least 2, got {self.readout_folds}")
        if self.heldout_probe_pool < 0:
            raise ValueError(f"heldout_probe_pool must be 0 (no probe) or a pooled size >= 1, got {self.heldout_probe_pool}")
        if not 0.0 <= self.heldout_probe_weight <= 1.0:
            raise ValueError(f"heldout_probe_weight must be in [0, 1], got {self.heldout_probe_weight}")
        if not 0.0 <= self.heldout_basis_weight <= 1.0:
            raise ValueError(f"heldout_basis_weight must be in [0, 1], got {self.heldout_basis_weight}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TeacherConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown teacher config fields {sorted(unknown)}")
        return cls(**dict(d))


PRESETS: dict[str, TeacherConfig] = {
    "tiny": TeacherConfig(n_simple=16, n_complex=16, kernel_size=15, width=24, n_blocks=1, ensemble=1,
                          epochs=8, batch_size=32, lr=3e-3, patience=3),
    # Sized so that 8 epochs over a 20k-image twin fit in 10 min on two cores (measured: ~4 min, benchmarks/teacher.py).
    "cpu": TeacherConfig(),
    "paper": TeacherConfig(n_simple=256, n_complex=256, kernel_size=25, noise="poisson", width=256, n_blocks=2,
                           ensemble=25, epochs=40, batch_size=64, lr=1e-3, patience=6, channels_last=True),
}


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, then ReLU; no in-place ops."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class BackEnd(nn.Module):
    """1x1 bottleneck over the V1 channels, then residual blocks (the first may downsample).

    With `front_end_shortcut` its output also carries its input, average-pooled
    to the blocks' grid and batch-normalised, as further channels: the readout
    then reads V1 (or the trunk) directly as well as what the blocks made of it.
    """

    def __init__(self, c_in: int, width: int, n_blocks: int, first_stride: int,
                 front_end_shortcut: bool = False) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width, width, first_stride if i == 0 else 1) for i in range(n_blocks)])
        self.shortcut_norm = nn.BatchNorm2d(c_in) if front_end_shortcut else None
        self.out_channels = width + (c_in if front_end_shortcut else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.bottleneck(x))
        if self.shortcut_norm is None:
            return y
        return torch.cat([y, self.shortcut_norm(F.adaptive_avg_pool2d(x, y.shape[-2:]))], dim=1)


class ResponseScale(nn.Module):
    """Per-neuron mean and s.d. of the training responses: z-scores in, response units out."""

    def __init__(self, n_neurons: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_neurons))
        self.register_buffer("std", torch.ones(n_neurons))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class TeacherMember(nn.Module):
    """One ensemble member: its own back end and one readout per session."""

    def __init__(self, c_in: int, config: TeacherConfig, map_hw: tuple[int, int], sessions: Mapping[str, int]) -> None:
        super().__init__()
        self.config, self.map_hw = config, map_hw
        self.back_end = BackEnd(c_in, config.width, config.n_blocks, config.first_stride,
                                front_end_shortcut=config.readout_sees_front_end)
        self.readouts = nn.ModuleDict({_slot(s): self._readout(n) for s, n in sessions.items()})
        self.probes = nn.ModuleDict()  # held-out sessions' linear probes, blended into their readouts (`read`)

    def _readout(self, n_neurons: int) -> Readout:
        c = self.config
        if c.readout == "gaussian":
            return GaussianReadout(self.back_end.out_channels, *self.map_hw, n_neurons, feature_l1=c.feature_l1,
                                   output=c.readout_output)
        return FactorisedReadout(self.back_end.out_channels, *self.map_hw, n_neurons, mask_l1=c.mask_l1,
                                 feature_l1=c.feature_l1, output=c.readout_output)

    def read(self, maps: torch.Tensor, session: str) -> torch.Tensor:
        """`session`'s z-scored prediction from this member's maps: its readout, blended with its probe if it has one."""
        z = self.readouts[_slot(session)](maps)
        if _slot(session) not in self.probes:
            return z
        probe = self.probes[_slot(session)]
        return (1.0 - probe.blend) * z + probe.blend * probe(maps)

    def forward(self, v1: torch.Tensor, session: str) -> torch.Tensor:
        return self.read(self.back_end(v1), session)


class Teacher(nn.Module):
    """Input N x 3 x H x W in [0, 1]; `forward(x, session)` gives N x n_neurons predicted responses."""

    def __init__(self, config: TeacherConfig, sessions: Mapping[str, Sequence[str]], seed: int = 0) -> None:
        super().__init__()
        if not sessions:
            raise ValueError("a teacher needs at least one session")
        self.config, self.seed = config, int(seed)
        self.sessions: dict[str, list[str]] = {}
        sizes = {s: len(ids) for s, ids in sessions.items()}
        for s in sizes:
            _check_session_id(s)
        backbone = dict(config.backbone) if config.backbone else None
        self.vone: VOneBlock | None = None
        self.front: LearnedFrontEnd | None = None
        self.adapter: nn.Module | None = None
        self.trunk: ResNetTrunk | None = None
        if config.front_end == "conv":
            if backbone is not None:
                raise ValueError("a learned front end and a pretrained trunk do not combine; choose one")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.front = LearnedFrontEnd(config.n_simple + config.n_complex, config.kernel_size,
                                             config.vone_stride, config.image_size)
            channels, side = self.front.out_channels, self.front.output_size()
        elif backbone is None or backbone["stem"] == "vone":
            self.vone = VOneBlock(config.n_simple, config.n_complex, image_size=config.image_size,
                                  visual_degrees=config.visual_degrees, kernel_size=config.kernel_size,
                                  stride=config.vone_stride, k_exc=config.k_exc, noise=config.noise,
                                  noise_level=config.noise_level, sampler=config.sampler, seed=seed)
            channels, side = self.vone.out_channels, self.vone.output_size()
        else:
            channels, side = 3, config.image_size
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)  # members differ by their place in this one seeded stream
            if backbone is not None:
                self.trunk = ResNetTrunk(ResNetSpec.from_dict(backbone["spec"]), backbone["stop_at"],
                                         stem=backbone["stem"] == "pixels")
                if self.vone is not None:  # VOneNet: a trained 1x1 conv stands in for the stem's output
                    stem = self.trunk.spec.stem_width
                    self.adapter = nn.Sequential(nn.Conv2d(channels, stem, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
                channels, side = self.trunk.out_channels, self.trunk.output_size(side)
                self.trunk.requires_grad_(bool(backbone.get("trainable", False)))
            side = (side - 1) // config.first_stride + 1
            self.map_hw = (side, side)
            self.members = nn.ModuleList(TeacherMember(channels, config, self.map_hw, sizes)
                                         for _ in range(config.ensemble))
        self.scales = nn.ModuleDict({_slot(s): ResponseScale(n) for s, n in sizes.items()})
        self.bases = nn.ModuleDict()  # held-out sessions' neuron bases, blended into their predictions
        self.sessions = {s: [str(i) for i in ids] for s, ids in sessions.items()}
        self._trunk_frozen = False

    # ------------------------------------------------------------- predict
    @property
    def default_session(self) -> str:
        return next(iter(self.sessions))

    @property
    def neuron_ids(self) -> list[str]:
        """Every neuron, session by session (the column order of `predict_all_sessions`)."""
        return [i for ids in self.sessions.values() for i in ids]

    def forward(self, x: torch.Tensor, session: str | None = None) -> torch.Tensor:
        session = self.default_session if session is None else session
        if session not in self.sessions:
            raise KeyError(f"no session {session!r}; the teacher has {list(self.sessions)}")
        shared = self.features(x)
        feats = [m.back_end(shared) for m in self.members]
        return self.scales[_slot(session)](self._session_z(feats, session, {}))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What every member sees: the VOneBlock's maps, or a pretrained trunk's (behind the VOneBlock or not)."""
        if self.vone is not None:
            x = self.vone(x)
        if self.front is not None:
            x = self.front(x)
        if self.adapter is not None:
            x = self.adapter(x)
        if self.trunk is not None:
            x = self.trunk(x)
        return x

    @property
    def attribution_layer(self) -> nn.Module:
        """The stage all members share, where Grad-CAM and conductance look by default."""
        return self.trunk if self.trunk is not None else (self.vone or self.front)  # type: ignore[return-value]

    def predict_all_sessions(self, x: torch.Tensor) -> torch.Tensor:
        """All sessions' neurons at once (N x total neurons), sharing the front end and back ends."""
        shared = self.features(x)
        feats = [m.back_end(shared) for m in self.members]
        known: dict[str, torch.Tensor] = {}
        return torch.cat([self.scales[_slot(s)](self._session_z(feats, s, known)) for s in self.sessions], dim=1)

    def _session_z(self, feats: Sequence[torch.Tensor], session: str, known: dict[str, torch.Tensor]) -> torch.Tensor:
        """`session`'s z-scored prediction from the members' maps: their average, blended with its neuron basis.

        `known` keeps every session's z computed so far, so sessions that
        serve as a basis are read out once however many use them.
        """
        if session not in known:
            z = torch.stack([m.read(f, session) for m, f in zip(self.members, feats)]).mean(0)
            basis = self.bases[_slot(session)] if _slot(session) in self.bases else None
            if basis is not None:
                source_z = torch.cat([self._session_z(feats, s, known) for s in basis.sources], dim=1)
                z = (1.0 - basis.blend) * z + basis.blend * basis(source_z)
            known[session] = z
        return known[session]

    def sessions_z(self, x: torch.Tensor, sessions: Sequence[str]) -> torch.Tensor:
        """The z-scored predictions of every neuron of `sessions`, side by side (N x their neurons): a basis's regressors."""
        shared = self.features(x)
        return self.read_sessions([m.back_end(shared) for m in self.members], sessions)

    def read_sessions(self, feats: Sequence[torch.Tensor], sessions: Sequence[str]) -> torch.Tensor:
        """`sessions_z` from the members' back-end maps already computed (`readout_fit.member_features`)."""
        known: dict[str, torch.Tensor] = {}
        return torch.cat([self._session_z(feats, s, known) for s in sessions], dim=1)

    def readouts_of(self, session: str) -> list[Readout]:
        """`session`'s readout in every member, in member order."""
        return [m.readouts[_slot(session)] for m in self.members]

    def response_scale(self, session: str) -> ResponseScale:
        """`session`'s map from z-scores to response units."""
        return self.scales[_slot(session)]

    def regularizer(self, session: str | None = None) -> torch.Tensor:
        """Readout penalty of `session` (default: the first), averaged over neurons and members."""
        session = self.default_session if session is None else session
        return torch.stack([m.readouts[_slot(session)].regularizer("mean") for m in self.members]).mean()

    # ------------------------------------------------------------ sessions
    def set_response_stats(self, session: str, mean: np.ndarray, std: np.ndarray) -> None:
        """Fix the z-score <-> response mapping of `session` (from its training split)."""
        scale = self.scales[_slot(session)]
        with torch.no_grad():
            scale.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
            scale.std.copy_(torch.as_tensor(np.asarray(std), dtype=torch.float32))

    def add_session(self, session: str, neuron_ids: Sequence[str]) -> None:
        """A fresh readout (in every member) for a new session, e.g. a held-out recording."""
        _check_session_id(session)
        if session in self.sessions:
            raise ValueError(f"session {session!r} already has a readout")
        device = next(self.parameters()).device
        for m in self.members:
            m.readouts[_slot(session)] = m._readout(len(neuron_ids)).to(device)
        self.scales[_slot(session)] = ResponseScale(len(neuron_ids)).to(device)
        self.sessions[session] = [str(i) for i in neuron_ids]

    def reset_session(self, session: str) -> None:
        """Fresh readouts (in every member) for `session`, as `add_session` makes them, and no probe: to refit them."""
        if session not in self.sessions:
            raise KeyError(f"no session {session!r}; the teacher has {list(self.sessions)}")
        device = next(self.parameters()).device
        for m in self.members:
            m.readouts[_slot(session)] = m._readout(len(self.sessions[session])).to(device)
            if _slot(session) in m.probes:
                del m.probes[_slot(session)]
        if _slot(session) in self.bases:
            del self.bases[_slot(session)]

    def add_probe(self, session: str) -> list[PooledLinearProbe]:
        """An unfitted linear probe (in every member) for `session`, pooled and weighted as the config says."""
        if session not in self.sessions:
            raise KeyError(f"no session {session!r}; the teacher has {list(self.sessions)}")
        if self.config.heldout_probe_pool < 1:
            raise ValueError("this teacher's config has no probe (heldout_probe_pool is 0)")
        device = next(self.parameters()).device
        for m in self.members:
            m.probes[_slot(session)] = PooledLinearProbe(m.back_end.out_channels, self.config.heldout_probe_pool,
                                                         len(self.sessions[session]),
                                                         self.config.heldout_probe_weight).to(device)
        return [m.probes[_slot(session)] for m in self.members]

    @property
    def probed_sessions(self) -> list[str]:
        """The sessions whose predictions blend in a linear probe."""
        return [s for s in self.sessions if _slot(s) in self.members[0].probes]

    def add_basis(self, session: str, sources: Sequence[str]) -> NeuronBasis:
        """An unfitted neuron basis for `session` over the neurons of `sources`, weighted as the config says.

        The sources are sessions the trunk was trained on: none may be
        `session` itself or have a basis of its own.
        """
        if session not in self.sessions:
            raise KeyError(f"no session {session!r}; the teacher has {list(self.sessions)}")
        if self.config.heldout_basis_weight <= 0.0:
            raise ValueError("this teacher's config has no neuron basis (heldout_basis_weight is 0)")
        sources = [str(s) for s in sources]
        wrong = [s for s in sources if s not in self.sessions or s == session or _slot(s) in self.bases]
        if wrong or not sources:
            raise ValueError(f"a basis for {session!r} needs other sessions without bases of their own; "
                             f"got {sources} (unusable: {wrong})")
        if any(session in basis.sources for basis in self.bases.values()):
            raise ValueError(f"session {session!r} is already a source of another session's basis")
        device = next(self.parameters()).device
        n_in = sum(len(self.sessions[s]) for s in sources)
        self.bases[_slot(session)] = NeuronBasis(sources, n_in, len(self.sessions[session]),
                                                 self.config.heldout_basis_weight).to(device)
        return self.bases[_slot(session)]

    @property
    def basis_sessions(self) -> dict[str, list[str]]:
        """Session -> the sessions whose neurons its neuron basis combines."""
        return {s: list(self.bases[_slot(s)].sources) for s in self.sessions if _slot(s) in self.bases}

    @property
    def backbone_trainable(self) -> bool:
        return self.trunk is not None and bool(self.config.backbone and self.config.backbone.get("trainable"))

    def _shared_modules(self) -> list[nn.Module]:
        """What all sessions share and may learn: back ends, the VOneNet adapter, a trainable backbone."""
        shared: list[nn.Module] = [m.back_end for m in self.members]
        if self.adapter is not None:
            shared.append(self.adapter)
        if self.backbone_trainable:
            shared.append(self.trunk)  # type: ignore[arg-type]
        return shared

    def trunk_parameters(self) -> Iterator[nn.Parameter]:
        """Everything shared by all sessions that training may change (the VOneBlock has no parameters)."""
        for module in self._shared_modules():
            yield from module.parameters()

    def freeze_trunk(self, frozen: bool = True) -> None:
        """Stop the shared stages learning (weights and BatchNorm statistics), to fit readouts alone."""
        self._trunk_frozen = frozen
        for p in self.trunk_parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Teacher":
        super().train(mode)
        if self.trunk is not None and not self.backbone_trainable:
            self.trunk.eval()  # a frozen pretrained trunk keeps its own BatchNorm statistics
        if self._trunk_frozen:
            for module in self._shared_modules():
                module.eval()
        return self

    def n_parameters(self) -> int:
        """Every learned number, the probes' and bases' closed-form weights (buffers) included."""
        probes = sum(probe.n_weights() for m in self.members for probe in m.probes.values())
        bases = sum(basis.n_weights() for basis in self.bases.values())
        return sum(p.numel() for p in self.parameters()) + probes + bases


def _slot(session: str) -> str:
    """Module key of a session: prefixed, so an id like "train" cannot shadow a Module attribute."""
    return f"session_{session}"


def _check_session_id(session: str) -> None:
    if not session or "." in session or not isinstance(session, str):
        raise ValueError(f"session ids must be non-empty strings without '.', got {session!r}")


def build_teacher(config: TeacherConfig | str, sessions: Mapping[str, int | Sequence[str]], seed: int = 0) -> Teacher:
    """A fresh teacher; `sessions` maps a session id to its neuron ids (or just a neuron count)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose from {sorted(PRESETS)}")
        config = PRESETS[config]
    named = {str(s): ([f"{s}_{i}" for i in range(v)] if isinstance(v, int) else list(v)) for s, v in sessions.items()}
    return Teacher(config, named, seed=seed)


# --------------------------------------------------------------- artifacts
def save_teacher(teacher: Teacher, run_dir: str | Path) -> Path:
    """Write run_dir/teacher/teacher.safetensors and architecture.json (no pickle anywhere)."""
    out = Path(run_dir) / TEACHER_DIR
    save_weights(out / WEIGHTS, teacher.state_dict(), metadata={"format": FORMAT})
    atomic_write_json(out / ARCHITECTURE, {"format": FORMAT, "config": teacher.config.to_dict(),
                                           "sessions": teacher.sessions, "seed": teacher.seed,
                                           "probed_sessions": teacher.probed_sessions,
                                           "basis_sessions": teacher.basis_sessions,
                                           "n_parameters": teacher.n_parameters(),
                                           "macs": model_macs(teacher, teacher.config.image_size)})
    return out


def load_teacher(run_dir: str | Path, verify: bool = True) -> Teacher | StudentBank | TruthTeacher:
    """Rebuild a saved teacher in eval mode; with `verify`, its files must match the run's manifest.

    A re-compression run's teacher is a bank of published compact models
    (`models.bank`), and a truth run's the digital twin itself
    (`models.truth`); each loads from the same two files.
    """
    run_dir = Path(run_dir)
    rel = [f"{TEACHER_DIR}/{WEIGHTS}", f"{TEACHER_DIR}/{ARCHITECTURE}"]
    if verify:
        manifest = read_manifest(run_dir, verify=False)
        missing = [r for r in rel if r not in manifest.get("files", {})]
        if missing:
            raise ArtifactError(f"the manifest does not record {missing}", run_dir / MANIFEST)
        verify_files(run_dir, manifest, only=rel)
    arch = read_json(run_dir / rel[1])
    if isinstance(arch, dict) and arch.get("format") == BANK_FORMAT:
        return load_bank(arch, run_dir / rel[0], run_dir / rel[1])
    if isinstance(arch, dict) and arch.get("format") == TRUTH_FORMAT:
        return load_truth(arch, run_dir / rel[0], run_dir / rel[1])
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ArtifactError(f"not a teacher architecture file (format {arch.get('format') if isinstance(arch, dict) else '?'})",
                            run_dir / rel[1])
    try:
        config = TeacherConfig.from_dict(arch["config"])
        teacher = Teacher(config, arch["sessions"], seed=int(arch["seed"]))
        for session in arch.get("probed_sessions", []):
            teacher.add_probe(session)
        for session, sources in arch.get("basis_sessions", {}).items():
            teacher.add_basis(session, sources)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"malformed teacher architecture ({e})", run_dir / rel[1]) from None
    tensors, _ = load_weights(run_dir / rel[0])
    try:
        teacher.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"weights do not fit the architecture ({str(e).splitlines()[0]})", run_dir / rel[0]) from None
    return teacher.eval()


def with_overrides(config: TeacherConfig, **overrides: Any) -> TeacherConfig:
    """A preset with some fields changed (e.g. fewer epochs for a quick run)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
