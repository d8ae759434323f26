"""The paper's table, reproduced: ``python -m mtlora_lite.paper`` (``run``) trains the
runs of ``recipes`` on PASCAL-Context and writes ``table`` (ours beside the paper's)."""
