"""sparseprune: prune PyTorch models and run them faster on CPUs with native sparse kernels."""

from importlib.metadata import PackageNotFoundError, version

from .config import show_config
from .convert import ConvertReport, LayerReport, convert, register_converter
from .formats import CSR, FORMATS, SELL
from .nn import SparseConv2d, SparseLinear
from .nn.packed import prepare_for_compile
from .ops import get_num_threads, set_num_threads
from .persist import load, save
from .pruning import Protect, Pruner, PruneReport, prune, remove, summary

try:
    __version__ = version("sparseprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CSR",
    "FORMATS",
    "SELL",
    "ConvertReport",
    "LayerReport",
    "Protect",
    "PruneReport",
    "Pruner",
    "SparseConv2d",
    "SparseLinear",
    "__version__",
    "convert",
    "get_num_threads",
    "load",
    "prepare_for_compile",
    "prune",
    "register_converter",
    "remove",
    "save",
    "set_num_threads",
    "show_config",
    "summary",
]
