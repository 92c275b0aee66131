"""Shared plumbing: errors, atomic writes, image reading, devices, checkpoints, logging, metrics."""
