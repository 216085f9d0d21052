"""Adapters to training libraries; each imports its library, which the core never does."""
