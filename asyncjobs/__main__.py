"""``python -m asyncjobs`` is the ``asyncjobs`` command."""

import sys

from .cli import main

sys.exit(main())
