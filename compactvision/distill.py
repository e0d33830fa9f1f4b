"""Knowledge distillation: the teacher labels a large image stream; students fit the labels.

The paper labels 12M images; we cannot hold that in memory, and neither can a
user's laptop. So labels live on disk: `LabelCache` writes images (uint8) and
teacher outputs (float32) into memory-mapped `.npy` files chunk by chunk, and
training streams minibatches from them. Memory is bounded by the batch size,
however long the stream. Each chunk is a pure function of (seed, chunk index),
so an interrupted labelling run resumes exactly where it stopped.

The stream mixes the package's natural photographs (random crops, augmented),
synthetic textures (1/f noise, dead leaves), and the dataset's own training
images, which anchor the students to the distribution they are scored on.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from compactvision.artifacts import atomic_write_json, read_json
from compactvision.errors import ArtifactError
from compactvision.runtime import autocast, select_device
from compactvision.data.images import dead_leaves, natural_crops, pink_noise, zoom_crops
from compactvision.inputs import as_model_input, fit_images
from compactvision.progress import Progress, silent


@dataclass(frozen=True)
class StreamConfig:
    """What the teacher labels: how many images, and the mix of their sources."""

    n_images: int = 20_000
    image_size: int = 112
    chunk: int = 256
    natural_fraction: float = 0.6   # crops of the bundled photographs
    synthetic_fraction: float = 0.2  # pink noise and dead leaves
    # the rest: the dataset's own training images (with flips), when given
    seed: int = 0
    # Each own image is also seen through a random window of 1 - own_zoom to 1 times its side (`zoom_crops`):
    # shifted and magnified views, so a stream longer than the dataset does not repeat its images.
    own_zoom: float = 0.0

    def __post_init__(self) -> None:
        # Refused when the settings are made, not at the first chunk after the labelling has begun.
        if not 0.0 <= self.own_zoom < 1.0:
            raise ValueError(f"own_zoom must be in [0, 1), got {self.own_zoom}")


def same_stream(recorded: Mapping[str, Any] | None, config: StreamConfig) -> bool:
    """Whether a recorded stream (`asdict(StreamConfig)`) is `config`'s; a setting it predates counts as its default.

    So a cache labelled before a setting was added still resumes, and is
    reused, under a version that has it.
    """
    return recorded is not None and {**asdict(StreamConfig()), **recorded} == asdict(config)


def _chunk_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def stream_chunk(config: StreamConfig, index: int, own_images: np.ndarray | None = None) -> np.ndarray:
    """Chunk `index` of the distillation stream: uint8 (chunk, H, W, 3), deterministic."""
    n, size = config.chunk, config.image_size
    seed = _chunk_seed(config.seed, index)
    rng = np.random.default_rng(seed)
    own_share = 0.0 if own_images is None or len(own_images) == 0 else max(0.0, 1.0 - config.natural_fraction - config.synthetic_fraction)
    shares = np.array([config.natural_fraction, config.synthetic_fraction, own_share])
    counts = rng.multinomial(n, shares / shares.sum())
    parts = [natural_crops(int(counts[0]), size=size, seed=seed, augment=True)]
    if counts[1]:
        half = int(counts[1]) // 2
        parts += [pink_noise(half, size, seed + 1), dead_leaves(int(counts[1]) - half, size, seed + 2)]
    if counts[2]:
        pick = rng.integers(0, len(own_images), int(counts[2]))
        own = fit_images(own_images[pick], size)
        flip = rng.random(len(own)) < 0.5
        own[flip] = own[flip, :, ::-1]
        own = zoom_crops(own, config.own_zoom, rng)
        parts.append(own)
    images = np.concatenate([fit_images(p, size) for p in parts if len(p)], axis=0)
    return images[rng.permutation(len(images))]


class LabelCache:
    """Teacher labels on disk: `images.npy` (uint8), `labels.npy` (float32), `cache.json`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta = read_json(self.root / "cache.json")
        if not meta.get("complete"):
            raise ArtifactError("label cache is incomplete; rebuild it (it resumes where it stopped)", self.root)
        self.meta = meta
        self.images = np.load(self.root / "images.npy", mmap_mode="r")
        self.labels = np.load(self.root / "labels.npy", mmap_mode="r")
        if len(self.images) != len(self.labels):
            raise ArtifactError("images and labels differ in length", self.root)

    def __len__(self) -> int:
        return int(self.meta["n_images"])

    @property
    def neuron_ids(self) -> list[str]:
        return list(self.meta["neuron_ids"])

    @property
    def seconds(self) -> float | None:
        """Time spent labelling, summed over resumes (None for a cache written before it was recorded)."""
        value = self.meta.get("seconds")
        return None if value is None else float(value)

    def split(self, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Fixed train/validation indices (the last `val_fraction` of the stream)."""
        n_val = max(1, int(round(len(self) * val_fraction)))
        idx = np.arange(len(self))
        return idx[:-n_val], idx[-n_val:]

    def batches(self, indices: np.ndarray, batch_size: int, columns: np.ndarray | None = None,
                seed: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Minibatches (uint8 images, float32 labels) read from disk; shuffled when `seed` is set."""
        order = np.asarray(indices)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(order)
        for start in range(0, len(order), batch_size):
            take = np.sort(order[start:start + batch_size])  # sorted reads are faster on a memmap
            labels = self.labels[take] if columns is None else self.labels[take][:, columns]
            yield np.asarray(self.images[take]), np.asarray(labels, dtype=np.float32)

    @classmethod
    def build(cls, root: str | Path, teacher: nn.Module, neuron_ids: list[str], config: StreamConfig,
              own_images: np.ndarray | None = None, device: str | None = None,
              progress: Progress = silent, batch_size: int = 128) -> "LabelCache":
        """Label `config.n_images` stream images with `teacher`, resuming a partial cache.

        `progress("label", chunks_done, n_chunks)` follows each chunk once it is on disk.
        """
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        meta_path = root / "cache.json"
        n_chunks = -(-config.n_images // config.chunk)
        n_total = n_chunks * config.chunk
        meta = {"stream": asdict(config), "neuron_ids": list(neuron_ids), "n_images": n_total,
                "chunks_done": 0, "complete": False, "seconds": 0.0}
        if meta_path.exists():
            old = read_json(meta_path)
            if same_stream(old.get("stream"), config) and old.get("neuron_ids") == meta["neuron_ids"]:
                if old.get("complete"):
                    return cls(root)
                meta["chunks_done"] = int(old.get("chunks_done", 0))
                meta["seconds"] = old.get("seconds")  # None: chunks labelled before the time was recorded
        mode = "r+" if meta["chunks_done"] else "w+"
        size = config.image_size
        images = np.lib.format.open_memmap(root / "images.npy", mode=mode, dtype=np.uint8, shape=(n_total, size, size, 3))
        labels = np.lib.format.open_memmap(root / "labels.npy", mode=mode, dtype=np.float32, shape=(n_total, len(neuron_ids)))
        dev = select_device(device)
        # Channels-last: faster or equal for every teacher kind timed (`benchmarks/memory_layout.py --label`).
        teacher = teacher.to(dev, memory_format=torch.channels_last).eval()
        for c in range(meta["chunks_done"], n_chunks):
            t0 = time.perf_counter()
            chunk = stream_chunk(config, c, own_images)
            out = []
            with torch.no_grad(), autocast(dev):
                for s in range(0, len(chunk), batch_size):
                    x = as_model_input(chunk[s:s + batch_size], dev).contiguous(memory_format=torch.channels_last)
                    out.append(teacher(x).float().cpu().numpy())
            rows = slice(c * config.chunk, (c + 1) * config.chunk)
            images[rows] = chunk
            labels[rows] = np.concatenate(out)
            images.flush()
            labels.flush()
            meta["chunks_done"] = c + 1  # recorded only after the data is on disk
            if meta["seconds"] is not None:  # summed over resumes: what the labels cost
                meta["seconds"] += time.perf_counter() - t0
            atomic_write_json(meta_path, meta)
            progress("label", c + 1, n_chunks)
        del images, labels
        meta["complete"] = True
        atomic_write_json(meta_path, meta)
        return cls(root)
