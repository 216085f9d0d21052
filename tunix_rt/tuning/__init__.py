"""Tuning: sweep files, studies on record, and the Ray Tune adapters."""
