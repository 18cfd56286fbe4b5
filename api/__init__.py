"""pg-broker's REST API (Litestar): submit, inspect, control, and the HTTP worker protocol."""
