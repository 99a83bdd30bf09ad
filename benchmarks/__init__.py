"""Benchmarks: scripts that measure speed and quality, print tables and write JSON and plots.

They are not part of the installed package; run them from the repository root, e.g.
``python -m benchmarks.samplers --field gmm16 --out outputs/bench/gmm16``.
"""
