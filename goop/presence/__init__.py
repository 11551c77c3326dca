"""A peer's presence over rendezvous servers: publishing, subscribing, the merged table."""
