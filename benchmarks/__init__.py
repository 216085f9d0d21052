"""Side-by-side benchmarks: each measures tunix-rt and a naive alternative in one run.

Run them with ``python -m benchmarks.run`` (``make bench``); see benchmarks/README.md.
"""
