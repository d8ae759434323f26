"""PASCAL-Context, the benchmark of the MTLoRA paper: ``data`` (the PASCAL_MT archive as it is),
``readers`` (one reader per file format), ``transforms`` (augmentation of the image and every
label as the public loaders do it, normals as vectors), ``tasks`` (the four tasks' losses and
metrics as ``Task``s), ``check`` (every file of an archive opened once, each bad one named) and
``fixture`` (a tiny archive in the real formats, and a damaged copy, for tests and offline
runs)."""
