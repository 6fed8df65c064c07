"""Which inference backend runs a model: ONNX Runtime or PyTorch.

Light on purpose (no torch, no onnxruntime import): `grefel --version` and the
parsers ask it without paying for either.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from grefel.devices import resolve_device
from grefel.errors import ConfigError

BACKENDS = ("auto", "torch", "onnx")


def onnx_runtime_version() -> str | None:
    """The installed ONNX Runtime's version when the onnx extra (onnxruntime and onnx, which exports) is
    installed, else None; read from the package metadata, without importing either."""
    try:
        version("onnx")
        return version("onnxruntime")
    except PackageNotFoundError:
        return None


def require_onnx_extra(what: str) -> None:
    """A one-line ConfigError naming the extra to install, instead of an ImportError traceback later."""
    if onnx_runtime_version() is None:
        raise ConfigError(f"{what} needs the onnx extra (onnx and onnxruntime): pip install 'grefel[onnx]'")


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """auto: ONNX Runtime on the CPU when the onnx extra is installed (the same probabilities to 1e-4 and
    faster there than eager PyTorch), else PyTorch; PyTorch on CUDA."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnx" if onnx_runtime_version() is not None and resolve_device(device).type == "cpu" else "torch"
    if backend == "onnx":
        require_onnx_extra("backend onnx")
    return backend


def default_backend_line() -> str:
    """What `grefel predict`, `serve` and `Recognizer()` run on the CPU by default, for `grefel --version`."""
    runtime = onnx_runtime_version()
    if runtime is None:
        return "inference backend: torch (the onnx extra, faster on CPU, is not installed)"
    return f"inference backend: onnx on CPU (ONNX Runtime {runtime}), torch on CUDA"
