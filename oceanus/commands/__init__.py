"""The ``oceanus`` subcommands that belong to no single component, one module each.

They sit on top: a command may import the core, the collector, the flusher and
its sinks; nothing below imports a command (tests/oceanus/test_layers.py).
"""
