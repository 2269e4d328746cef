"""``python -m asyncjobs`` is the ``asyncjobs`` command."""

import sys

from .client.cli import main

sys.exit(main())
