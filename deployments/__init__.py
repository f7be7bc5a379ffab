"""ragserve: Retrieval-Augmented Generation served as a Ray Serve application."""

from importlib import metadata

try:
    __version__ = metadata.version("ragserve")  # the one source: pyproject.toml
except metadata.PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
