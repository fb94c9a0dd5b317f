"""The three worker processes. Each is started by the supervisor as `python -m workers.NAME`."""
