"""The TVM backend's errors, in one module that build, cuda, compiled and runtime all import."""
from __future__ import annotations


class UnknownTargetError(ValueError):
    """The target name is not one intvit can compile for."""


class IsaUnavailableError(RuntimeError):
    """The instruction set forced with ``isa=`` cannot be used for this target, or cannot run on this machine."""


class NoDeviceError(RuntimeError):
    """The module was compiled for a device this machine does not have."""
