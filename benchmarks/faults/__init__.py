"""The seeded fault campaign: see ``python -m benchmarks.faults --help``."""
