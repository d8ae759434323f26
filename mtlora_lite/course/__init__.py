"""Everything that exists for the course: the procedural scenes and their tasks, the course Swin
and its pretraining, the course recipes and their run records, figures, widgets and notebook
helpers. Built on ``mtlora_lite.multitask`` and ``mtlora_lite.adapters``; the library never
imports it.
"""
