"""The paper's table, reproduced: ``python -m mtlora_lite.paper`` (``command``) trains the runs of
``recipes`` on PASCAL-Context (``run``) under one output folder (``outputs``) and writes ``table``
(ours beside the paper's). An application of the library: it imports ``mtlora_lite.multitask``
and ``mtlora_lite.adapters``, never the course."""
