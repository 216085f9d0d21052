"""tunix-rt: the model-quality loop for LLM post-training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tunix-rt")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
