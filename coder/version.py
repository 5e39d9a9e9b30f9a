"""The version of coder, recorded in manifests, reports and model folders."""

__version__ = "0.1.0"
