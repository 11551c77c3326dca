"""goop: presence and discovery for a peer-to-peer network of small personal sites."""

__version__ = "0.1.0"
