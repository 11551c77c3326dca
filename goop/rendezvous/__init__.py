"""The rendezvous server: /publish, /events (SSE), dashboard, admin, health."""
