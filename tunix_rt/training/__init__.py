"""Training jobs: run files, supervised job processes, trainables."""
