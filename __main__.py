"""``python -m intvit`` is the ``intvit`` command."""
import sys

from .cli import main

sys.exit(main())
