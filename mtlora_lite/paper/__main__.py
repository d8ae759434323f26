"""``python -m mtlora_lite.paper``: the command of ``paper.command``."""

import sys

from mtlora_lite.paper.command import main

sys.exit(main())
