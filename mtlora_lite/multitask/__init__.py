"""Multi-task learning on top of the adapters: tasks (losses, metrics, Delta_m), decoders,
multi-task models and their baselines (``build_model``), the trainer (``fit``, ``evaluate``; its
logs for TensorBoard in ``tensorboard``) and backbone helpers for timm models. Imports
``mtlora_lite.adapters``, never ``mtlora_lite.course``.
"""
