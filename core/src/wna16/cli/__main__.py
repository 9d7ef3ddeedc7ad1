"""``python -m wna16.cli``: the same as the ``wna16`` console script."""

import sys

from wna16.cli import main

sys.exit(main())
