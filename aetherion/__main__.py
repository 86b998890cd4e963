"""``python -m aetherion`` is the ``aetherion`` command."""

import sys

from aetherion.cli import main

sys.exit(main())
