"""``python -m intvit`` is the ``intvit`` command."""
from .cli import entry

entry()
