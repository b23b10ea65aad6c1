"""The ``clio-stream`` command line: one module per command group, ``main`` builds the parser and dispatches.

Subcommands stay thin: parse arguments, build settings, call the library.
"""
