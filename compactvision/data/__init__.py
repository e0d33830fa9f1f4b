"""Images, the digital twin and neural-data loaders. One dataset type out: `NeuralDataset`."""
from compactvision.data.dataset import NeuralDataset, Session

__all__ = ["NeuralDataset", "Session"]
