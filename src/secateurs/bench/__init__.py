"""Benchmark harnesses users run (``secateurs bench``): outside the pruning path, which never imports them."""
