"""Hostile input, races and faults: what a service on a network must survive."""
