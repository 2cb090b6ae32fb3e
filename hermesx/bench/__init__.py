"""Benchmarks behind `hermesx bench`."""
