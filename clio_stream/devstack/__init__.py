"""The embedded stack for laptops, tests and the demo: binaries, processes, packaged models."""
