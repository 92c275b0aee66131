"""Readers and writers of each dataset's own format, the synthetic generator, and samplers."""
