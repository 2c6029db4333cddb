"""``eval_mode``: run users' modules in eval mode and give them back in the modes they had."""
from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Within the context every module (and submodule) is in eval mode; afterwards each has its own
    ``training`` flag back, mixed modes included (``model.train(flag)`` would flatten them)."""
    flags = {m: m.training for module in modules for m in module.modules()}
    try:
        for module in modules:
            module.eval()
        yield modules[0] if len(modules) == 1 else modules
    finally:
        for m, training in flags.items():
            m.training = training
