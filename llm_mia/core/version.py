"""The package version (one place: the public API, the report and SARIF read it)."""

__version__ = "0.1.0"
