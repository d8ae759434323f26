"""PASCAL-Context, the benchmark of the MTLoRA paper: ``data`` (the PASCAL_MT archive as it is),
``transforms`` (augmentation of the image and every label, normals as vectors), ``tasks`` (the
four tasks' losses and metrics as ``Task``s) and ``fixture`` (a tiny archive in the real
formats, for tests and offline runs)."""
