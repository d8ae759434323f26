"""The adapter layers: torch only (and timm for the Swin parts); usable in any project.

``base`` (``AdapterLayer``, the class every adapter derives from); ``targets`` (finding layers by
name, injecting adapters); ``lora`` (the LoRA layer) and ``functional`` (the fused autograd of
LoRA and multi-head LoRA, dropout masks); ``freezing`` (by structure) and ``merging``; ``blocks``
(LoRA on chosen blocks of a fused Linear: q / v of timm's qkv); ``multihead`` (HydraLoRA /
R-LoRA); ``mtlora`` (MTLoRA's config and TA / TS layers) and ``swin`` (MTLoRA on a timm Swin:
injection, task streams, ``SwinTaskEncoder``); ``saving`` (adapter-only safetensors,
checksummed); ``peft`` (Hugging Face PEFT's LoRA folders, both ways); ``breakdown`` (exact
parameter counts); ``heads`` (multi-head diagnostics); ``checks`` (numeric options at the API
boundary) and ``atomic`` (files that are never half written). Nothing here imports
``mtlora_lite.multitask`` or ``mtlora_lite.course``.
"""
