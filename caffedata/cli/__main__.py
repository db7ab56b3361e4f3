"""``python -m caffedata.cli``."""
import sys

from . import main

sys.exit(main())
