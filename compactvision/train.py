"""The one training loop: teacher, readout refits and distilled students all go through `fit`.

It is written out, nanoGPT-style, rather than hidden in a framework: AdamW
with a cosine schedule, the loss on per-neuron z-scored responses, early
stopping on the validation median Pearson r, bf16 autocast on CUDA, progress
per epoch through `compactvision.progress`, and an atomic checkpoint at the
end of every epoch.

The checkpoint holds everything the next epoch depends on (weights, optimiser
moments, torch RNG states, the best weights so far, the early-stopping counter
and the history), and the data order of epoch e is a pure function of
(seed, e). So a run killed at any moment (Ctrl-C included) resumes from its
last finished epoch to exactly the weights an uninterrupted run ends with.

Data come in three shapes, so the same loop serves every stage:
  * `(images, targets)` arrays: images uint8 N x H x W x C or float N x C x H x W
    in [0, 1]; targets N x n_neurons (NaN = no response, ignored by the loss);
  * `{session: (images, targets)}`: several sessions, each batch from one
    session, the model called as `model(x, session)`;
  * a callable `epoch -> iterable of (images, targets[, session])` batches,
    for data that do not fit in memory (the distillation label cache); it must
    give the same batches for the same epoch for resume to be exact.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from compactvision.artifacts import atomic_write_bytes
from compactvision.errors import ArtifactError
from compactvision.inputs import as_model_input
from compactvision.progress import Progress, as_progress, silent
from compactvision.runtime import autocast, seed_everything, select_device

CHECKPOINT = "checkpoint.pt"
Arrays = tuple[Any, Any]
BatchStream = Callable[[int], Iterable[Sequence[Any]]]
ValMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    """How to fit; stored in checkpoints and manifests."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "mse"              # "mse" on z-scored responses, or "poisson" on raw counts
    patience: int = 5              # epochs without a better validation median r before stopping
    seed: int = 0
    device: str | None = None      # None: CUDA when present, else CPU
    amp: bool = True               # bf16 autocast, CUDA only
    channels_last: bool = False    # NHWC memory layout: faster convs on tensor-core GPUs
    compile: bool = False          # torch.compile the forward (CUDA; the first epoch pays the compile)
    prefetch: int = 2              # batches read ahead in a background thread (0: none)
    min_lr_ratio: float = 0.02     # the cosine schedule ends at lr * min_lr_ratio
    regularizer_weight: float = 1.0  # scale on `model.regularizer(...)`, when the model has one
    # BatchNorm layers keep their running statistics (eval mode) while their affine weights train: a short
    # fine-tune of an already fitted network on a few small batches would otherwise move them, and the network
    # it is judged as (eval mode) would not be the one it trained.
    frozen_bn: bool = False
    # Network slimming (Liu et al. 2017): after every step each BatchNorm scale moves `channel_l1` times its
    # learning rate toward zero (a proximal L1 step), so a channel the loss does not defend reaches exactly zero
    # and pruning removes it for free. The scales train at `scale_lr_ratio` times lr: Adam moves a parameter by
    # about its learning rate a step, so at the network's rate a scale near one could not reach zero in a short fit.
    channel_l1: float = 0.0
    scale_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "poisson"):
            raise ValueError(f"loss must be 'mse' or 'poisson', got {self.loss!r}")
        if self.channel_l1 < 0 or self.scale_lr_ratio <= 0:
            raise ValueError("channel_l1 must be >= 0 and scale_lr_ratio > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What happened; the model itself is left holding its best weights, in eval mode."""

    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    target_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)  # key -> (mean, std)
    train_seconds: float = 0.0
    images_per_second: float = 0.0


# ------------------------------------------------------------------ inputs
def prefetch(batches: Iterable[Any], depth: int) -> Iterator[Any]:
    """Read `depth` batches ahead in one background thread, keeping their order.

    Reading from a memory-mapped label cache and converting images is I/O and
    NumPy work that releases the GIL, so it overlaps the model's step (on a
    GPU, the device then waits less for data). One producer keeps the order,
    so training stays deterministic and resumable.
    """
    if depth <= 0:
        yield from batches
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(b)
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _key(k: Any) -> str:
    return "" if k is None else str(k)


class _Batches:
    """One view over the three data shapes: `epoch(e)` yields (key, images, targets)."""

    def __init__(self, data: Arrays | Mapping[str, Arrays] | BatchStream, what: str) -> None:
        self.stream: BatchStream | None = None
        self.arrays: dict[str | None, Arrays] = {}
        if callable(data):
            self.stream = data
        elif isinstance(data, Mapping):
            self.arrays = {str(k): self._pair(v, f"{what}[{k}]") for k, v in data.items()}
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            self.arrays = {None: self._pair(data, what)}
        else:
            raise TypeError(f"{what}: expected (images, targets), {{session: (images, targets)}} or a batch callable")

    @staticmethod
    def _pair(pair: Arrays, what: str) -> Arrays:
        x, y = pair
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} images but {len(y)} target rows")
        return x, y

    def n_batches(self, batch_size: int) -> int | None:
        if self.stream is not None:
            return None
        return sum(math.ceil(len(x) / batch_size) for x, _ in self.arrays.values())

    def epoch(self, epoch: int, batch_size: int, seed: int, shuffle: bool) -> Iterator[tuple[str | None, Any, Any]]:
        if self.stream is not None:
            for batch in self.stream(epoch):
                yield (batch[2] if len(batch) > 2 else None), batch[0], batch[1]
            return
        rng = np.random.default_rng([seed, epoch])
        plan: list[tuple[str | None, np.ndarray]] = []
        for key, (x, _) in self.arrays.items():
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            plan += [(key, order[s:s + batch_size]) for s in range(0, len(x), batch_size)]
        if shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        for key, idx in plan:
            x, y = self.arrays[key]
            idx = np.sort(idx)  # sorted reads are faster from memory-mapped arrays
            yield key, x[idx], y[idx]

    def target_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-neuron mean and s.d. of the targets (NaN ignored), per key."""
        sums: dict[str, list[np.ndarray]] = {}
        for key, _, y in self.epoch(0, 4096, 0, shuffle=False):
            y = np.asarray(y, dtype=np.float64)
            ok = np.isfinite(y)
            acc = sums.setdefault(_key(key), [np.zeros(y.shape[1]), np.zeros(y.shape[1]), np.zeros(y.shape[1])])
            acc[0] += ok.sum(0)
            y0 = np.where(ok, y, 0.0)
            acc[1] += y0.sum(0)
            acc[2] += (y0 * y0).sum(0)
        out = {}
        for key, (n, s, s2) in sums.items():
            n = np.maximum(n, 1)
            mean = s / n
            std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
            out[key] = (mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))
        return out


# ---------------------------------------------------------------- the loss
def response_loss(pred: torch.Tensor, target: torch.Tensor, inv_std: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss over the finite targets.

    "mse" is the MSE between z-scored prediction and z-scored response, which
    is the raw error divided by each neuron's s.d. (the means cancel), so the
    model may predict in response units and every neuron still weighs the same.
    "poisson" is the Poisson negative log-likelihood of the raw counts; it
    needs non-negative predictions (rates).
    """
    valid = torch.isfinite(target)
    y = torch.where(valid, target, torch.zeros_like(target))
    if kind == "mse":
        per = ((pred - y) * inv_std) ** 2
    else:
        rate = pred.clamp_min(1e-6)
        per = rate - y * torch.log(rate)
    return (per * valid).sum() / valid.sum().clamp_min(1)


def pearson_per_neuron(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Default validation metric: Pearson r of each neuron (column) across images."""
    from compactvision.metrics import pearson_r

    return np.asarray(pearson_r(np.asarray(pred, np.float64).T, np.asarray(target, np.float64).T))


# -------------------------------------------------------------- evaluation
def _call(model: nn.Module, x: torch.Tensor, key: str | None) -> torch.Tensor:
    return model(x) if key is None else model(x, key)


@torch.no_grad()
def predict(model: nn.Module, images: Any, batch_size: int = 256, device: str | torch.device | None = None,
            key: str | None = None, amp: bool = True) -> np.ndarray:
    """Model outputs for many images, N x n_out float32, in eval mode and in batches."""
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(images), batch_size):
            with autocast(dev, amp):
                out.append(_call(model, as_model_input(images[s:s + batch_size], dev), key).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _evaluate(model: nn.Module, data: _Batches, config: TrainConfig, device: torch.device,
              inv_std: Mapping[str, torch.Tensor], val_metric: ValMetric) -> tuple[float, float]:
    """(median per-neuron score, mean loss) over the validation data."""
    preds: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    loss_sum, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for key, x, y in data.epoch(0, max(config.batch_size, 256), config.seed, shuffle=False):
            with autocast(device, config.amp):
                p = _call(model, as_model_input(x, device), key).float()
            yt = torch.as_tensor(np.asarray(y), dtype=torch.float32, device=device)
            loss_sum += float(response_loss(p, yt, inv_std[_key(key)], config.loss)) * len(yt)
            n += len(yt)
            preds.setdefault(_key(key), []).append(p.cpu().numpy())
            targets.setdefault(_key(key), []).append(yt.cpu().numpy())
    scores = [np.asarray(val_metric(np.concatenate(preds[k]), np.concatenate(targets[k])), float).ravel() for k in preds]
    all_scores = np.concatenate(scores) if scores else np.array([np.nan])
    score = float(np.nanmedian(all_scores)) if np.isfinite(all_scores).any() else float("nan")
    return score, loss_sum / max(n, 1)


# ------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """One file, written atomically: a kill mid-write leaves the previous checkpoint intact."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError("checkpoint not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise ArtifactError(f"not a readable checkpoint ({e})", path) from None


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _lr_at(config: TrainConfig, progress: float) -> float:
    """Cosine decay from lr to lr * min_lr_ratio over the run (progress in [0, 1])."""
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    # No weight decay on biases and norm scales: decaying them only shifts the operating point.
    decay = [p for p in params if p.ndim >= 2]
    keep = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    if config.channel_l1 or config.scale_lr_ratio != 1.0:
        # Only then a group of their own: checkpoints of fits without slimming keep their optimiser layout.
        scales = {id(p) for p in _bn_scales(model)}
        groups[1]["params"] = [p for p in keep if id(p) not in scales]
        groups.append({"params": [p for p in keep if id(p) in scales], "weight_decay": 0.0,
                       "lr_scale": config.scale_lr_ratio, "channel_l1": config.channel_l1})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _bn_scales(model: nn.Module) -> list[torch.Tensor]:
    """The trainable affine scales of the model's BatchNorm layers: one per channel, what slimming drives to zero."""
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.requires_grad]


@torch.no_grad()
def _shrink_scales(optimizer: torch.optim.Optimizer) -> None:
    """The proximal step of L1 on BatchNorm scales: soft-threshold each by its group's lr x channel_l1."""
    for g in optimizer.param_groups:
        if g.get("channel_l1"):
            step = g["lr"] * g["channel_l1"]
            for p in g["params"]:
                p.copy_(p.sign() * (p.abs() - step).clamp_min(0.0))


# ------------------------------------------------------------------- fit
@dataclass
class _FitState:
    """Everything besides weights and optimiser moments that the next epoch depends on.

    Kept in one object so a fresh start, a resume and a checkpoint all name
    the same fields: a field missed in one of them would break bit-exact resume.
    """

    stats: dict[str, tuple[np.ndarray, np.ndarray]]
    start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    finished: bool = False
    train_seconds: float = 0.0
    images_seen: int = 0


def _resumed_state(state: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                   config: TrainConfig, ckpt: Path) -> _FitState:
    """Restore model, optimiser and RNGs from a checkpoint, refusing one written with another config.

    A setting the checkpoint does not name was added later, and its default is
    what the older version did: a training interrupted before an upgrade resumes.
    """
    if {**TrainConfig().to_dict(), **state["config"]} != config.to_dict():
        raise ArtifactError(f"checkpoint was written with a different training config {state['config']}; "
                            "resume with the same settings or start a new run", ckpt)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and state.get("rng_cuda"):
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return _FitState(stats={k: (v[0].numpy(), v[1].numpy()) for k, v in state["target_stats"].items()},
                     start=int(state["epoch"]) + 1, history=list(state["history"]),
                     best_score=float(state["best_score"]), best_epoch=int(state["best_epoch"]),
                     bad_epochs=int(state["bad_epochs"]), best_state=state["best_model"],
                     finished=bool(state["finished"]), train_seconds=float(state["train_seconds"]),
                     images_seen=int(state["images_seen"]))


def _initial_state(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, ckpt: Path | None,
                   resume: bool, train: _Batches,
                   target_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None) -> _FitState:
    """The state epoch `start` begins from: the checkpoint's when resuming from one, else a seeded fresh start."""
    if resume and ckpt is not None and ckpt.exists():
        return _resumed_state(load_checkpoint(ckpt), model, optimizer, config, ckpt)
    seed_everything(config.seed)
    stats = train.target_stats() if target_stats is None else {
        k: (np.asarray(m, np.float32), np.asarray(s, np.float32)) for k, (m, s) in target_stats.items()}
    return _FitState(stats=stats)


def _train_epoch(model: nn.Module, forward: nn.Module, optimizer: torch.optim.Optimizer, train: _Batches,
                 epoch: int, config: TrainConfig, device: torch.device, layout: torch.memory_format,
                 inv_std: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """One pass over the training data in epoch `epoch`'s order: (summed loss, images seen)."""
    model.train()
    if config.frozen_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    n_batches = train.n_batches(config.batch_size)
    loss_sum, n_seen = 0.0, 0
    batches = prefetch(train.epoch(epoch, config.batch_size, config.seed, shuffle=True), config.prefetch)
    for i, (key, x, y) in enumerate(batches):
        if len(x) < 2:
            continue  # BatchNorm cannot train on one image
        frac = i / n_batches if n_batches else 0.0
        for g in optimizer.param_groups:
            g["lr"] = _lr_at(config, (epoch + frac) / config.epochs) * g.get("lr_scale", 1.0)
        xt = as_model_input(x, device).contiguous(memory_format=layout)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float32, device=device)
        with autocast(device, config.amp):
            pred = _call(forward, xt, key)
        loss = response_loss(pred.float(), yt, inv_std[_key(key)], config.loss)
        total = loss
        if config.regularizer_weight and hasattr(model, "regularizer"):
            reg = model.regularizer() if key is None else model.regularizer(key)
            total = loss + config.regularizer_weight * reg
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        _shrink_scales(optimizer)
        loss_sum += loss.item() * len(xt)
        n_seen += len(xt)
    return loss_sum, n_seen


def _end_epoch(st: _FitState, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
               epoch: int, score: float, val_loss: float, train_loss: float, t0: float) -> None:
    """Early-stopping bookkeeping: keep the best weights, count epochs without improvement, log the epoch."""
    if math.isfinite(score) and score > st.best_score:
        st.best_score, st.best_epoch, st.bad_epochs, st.best_state = score, epoch, 0, _cpu_state(model)
    else:
        st.bad_epochs += 1
    st.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                       "val_median_r": score, "lr": optimizer.param_groups[0]["lr"],
                       "seconds": time.perf_counter() - t0})
    st.finished = st.bad_epochs >= config.patience or epoch + 1 >= config.epochs


def _checkpoint(st: _FitState, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                epoch: int) -> dict[str, Any]:
    """What `_resumed_state` reads back; RNG states are taken now, after the epoch, so resume continues them."""
    return {
        "config": config.to_dict(), "epoch": epoch, "model": _cpu_state(model),
        "optimizer": optimizer.state_dict(), "best_model": st.best_state,
        "best_score": st.best_score, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
        "finished": st.finished, "history": st.history, "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "target_stats": {k: [torch.as_tensor(m), torch.as_tensor(s)] for k, (m, s) in st.stats.items()},
        "train_seconds": st.train_seconds, "images_seen": st.images_seen,
    }


def _result(st: _FitState, model: nn.Module, config: TrainConfig) -> TrainResult:
    """Leave the model holding its best weights, in eval mode, and say how the run went."""
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    model.eval()
    return TrainResult(best_epoch=st.best_epoch, best_score=st.best_score, epochs_run=len(st.history),
                       stopped_early=(bool(st.history) and len(st.history) < config.epochs
                                      and st.bad_epochs >= config.patience),
                       history=st.history, target_stats=st.stats, train_seconds=st.train_seconds,
                       images_per_second=st.images_seen / st.train_seconds if st.train_seconds > 0 else 0.0)


def fit(model: nn.Module, train_data: Arrays | Mapping[str, Arrays] | BatchStream,
        val_data: Arrays | Mapping[str, Arrays] | BatchStream, config: TrainConfig = TrainConfig(),
        checkpoint_dir: str | Path | None = None, resume: bool = False,
        progress: Progress | bool = silent, val_metric: ValMetric | None = None,
        target_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> TrainResult:
    """Train `model` in place on `train_data`, early-stopping on `val_data`'s median per-neuron score.

    `val_metric(pred, target)` (images x neurons each) returns one score per
    neuron; the default is Pearson r. `target_stats` ({key: (mean, std)},
    key "" for unkeyed data) fixes the z-scoring; by default it comes from the
    training targets and is returned in the result. With `checkpoint_dir`, a
    checkpoint is written after every epoch; `resume=True` continues from it.
    `progress("train", epochs_done, epochs)` is called after every epoch; a
    bool is taken as `progress.as_progress` reads it (True: a tqdm bar).
    """
    device = select_device(config.device)
    model.to(device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    if config.channels_last:
        model.to(memory_format=layout)
    # The compiled wrapper shares the model's parameters; checkpoints use the model's own keys.
    forward = torch.compile(model) if config.compile else model
    train, val = _Batches(train_data, "train_data"), _Batches(val_data, "val_data")
    val_metric = val_metric or pearson_per_neuron
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    optimizer = _optimizer(model, config)
    st = _initial_state(model, optimizer, config, ckpt, resume, train, target_stats)
    inv_std = {k: torch.as_tensor(1.0 / np.asarray(s, np.float32), device=device) for k, (_, s) in st.stats.items()}

    report = as_progress(progress)
    epoch = st.start
    while not st.finished and epoch < config.epochs:
        t0 = time.perf_counter()
        loss_sum, n_seen = _train_epoch(model, forward, optimizer, train, epoch, config, device, layout, inv_std)
        st.train_seconds += time.perf_counter() - t0
        st.images_seen += n_seen
        score, val_loss = _evaluate(model, val, config, device, inv_std, val_metric)
        _end_epoch(st, model, optimizer, config, epoch, score, val_loss, loss_sum / max(n_seen, 1), t0)
        if ckpt is not None:
            save_checkpoint(ckpt, _checkpoint(st, model, optimizer, config, epoch))
        report("train", epoch + 1, config.epochs)
        epoch += 1
    return _result(st, model, config)
