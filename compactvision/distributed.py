"""Per-neuron compression as Ray tasks, for many neurons on many machines.

Compressing neurons is embarrassingly parallel: each task is
`task(run_dir, index, config)` (`compress.compress_neuron`), a pure function of its
inputs that writes its own files atomically. So Ray only schedules; the
results are the same as the local backend's for the same seeds. On a cluster
the run directory must be on a filesystem every node sees (NFS, Lustre...).

Ray is optional (`pip install compactvision[distributed]`); nothing else in
the package imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence


def _ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the Ray backend needs the optional extra: pip install 'compactvision[distributed]'") from e
    return ray


def ray_tasks(fn: Callable[[str, int, dict[str, Any]], dict[str, Any]], run_dir: str | Path, indices: Sequence[int],
              config_dict: Mapping[str, Any], address: str | None = None) -> Iterator[dict[str, Any]]:
    """Submit `fn(run_dir, index, config)` once per neuron and yield each record as it finishes.

    Connects to `address` (e.g. "ray://head:10001" or "auto") or starts a local
    Ray when none is running. Interrupting the generator cancels what is still
    queued; finished neurons are already on disk and are skipped next time.
    """
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    threads = int(config_dict.get("threads_per_task", 1))
    task = ray.remote(num_cpus=threads, max_retries=2)(fn)
    run = str(Path(run_dir).resolve())
    pending = [task.remote(run, int(i), dict(config_dict)) for i in indices]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
