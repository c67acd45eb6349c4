"""The bottom layer: errors, configs, artifacts, hardware, measurement, privacy, tables and plots.

Imports nothing else of the package (see docs/ARCHITECTURE.md)."""
