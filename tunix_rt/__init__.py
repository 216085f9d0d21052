"""tunix-rt: the model-quality loop for LLM post-training."""

# The one place the version is written: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]). A literal, not importlib.metadata: every command
# imports this package, and reading the installed metadata cost ~40 ms a start.
__version__ = "0.9.1"
