"""``python -m tunix_rt.cli``: the ``tunix-rt`` command without its console script."""

import sys

from tunix_rt.cli import main

sys.exit(main())
