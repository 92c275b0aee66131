"""Ground-floor plumbing that imports nothing else of the project: errors, atomic writes, images, devices,
checkpoints, logging, config I/O, the command line, downloads, archives, box and resampling math, metrics, plots."""
