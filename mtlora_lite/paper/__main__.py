"""``python -m mtlora_lite.paper``: the command of ``paper.run``."""

import sys

from mtlora_lite.paper.run import main

sys.exit(main())
