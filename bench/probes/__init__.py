"""Probes: small measurements behind a single design choice of the package (one kernel, one setting)."""
