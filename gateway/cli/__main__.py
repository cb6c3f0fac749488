"""``python -m gateway.cli``: the ``edgegw`` command."""

import sys

from gateway.cli.commands import main

sys.exit(main())
