"""Home Gateway: mediates every IoT device in a home."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("home-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
