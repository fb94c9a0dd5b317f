"""Example third-party plugins for pyoomd; installed, they register through the pyoomd.detectors entry point."""
