"""The package version, in a module that imports nothing (``core.env`` reads it without
importing the package root, which imports every layer)."""

__version__ = "0.1.0"
