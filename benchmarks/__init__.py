"""Benchmarks and the per-sample reference path (needs the `dev` extra)."""
