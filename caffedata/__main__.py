"""``python -m caffedata``: the ``caffedata`` command line."""
import sys

from .cli import main

sys.exit(main())
