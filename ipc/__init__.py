"""Every ZeroMQ endpoint, socket option and message type of pyoomd, in one place (see endpoints.py)."""
