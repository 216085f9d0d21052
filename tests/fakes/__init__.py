"""Fakes that tests drive the code against: real servers speaking real protocols."""
