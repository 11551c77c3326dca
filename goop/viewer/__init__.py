"""The local viewer: this peer's merged peer table over HTTP."""
