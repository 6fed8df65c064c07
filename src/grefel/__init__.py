"""grefel: GReFEL facial expression recognition in PyTorch."""

from grefel.labels import CANONICAL_CLASSES

__version__ = "0.1.0"
__all__ = ["CANONICAL_CLASSES", "__version__"]
