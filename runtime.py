"""``intvit.runtime.load("model.so")``: run a module compiled by ``intvit compile``."""
from .tvm_backend.build import NoDeviceError
from .tvm_backend.runtime import LoadedModule, ModuleMismatchError, load

__all__ = ["LoadedModule", "ModuleMismatchError", "NoDeviceError", "load"]
