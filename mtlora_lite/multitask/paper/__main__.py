"""``python -m mtlora_lite.multitask.paper``: the command of ``paper.run``."""

import sys

from mtlora_lite.multitask.paper.run import main

sys.exit(main())
