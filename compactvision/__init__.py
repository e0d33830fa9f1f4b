"""compactvision: compact, readable deep-network models of visual-cortex neurons.

Pipeline: neural data -> teacher (VOneBlock + deep back end) -> distilled
student -> per-neuron pruned compact models (~10k parameters) -> export.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_compact"]


def load_compact(path):  # noqa: ANN001, ANN201 - thin lazy re-export
    """Load one exported compact model (`compactvision export`); see `artifacts.load_compact`."""
    from compactvision.artifacts import load_compact as _load

    return _load(path)
