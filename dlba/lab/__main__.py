"""``python -m dlba.lab``: the same as ``dlba-lab``."""

import sys

from dlba.lab.cli import main

sys.exit(main())
