"""The ``oceanus`` subcommands that belong to no single component, one module each.

They sit on top: a command may import the core, the collector, the flusher and
its sinks; nothing below imports a command (tests/oceanus/test_layers.py).
"""

from __future__ import annotations

from oceanus.errors import OceanusError

#: Exit statuses of every command (``oceanus --help`` lists them).
EXIT_OK = 0
#: Failed while running: a service did not answer, the SQL failed, a child died, work left undone.
EXIT_FAILED = 1
#: Usage or config error: nothing was done; the message names the option or key to change.
EXIT_USAGE = 2


class UsageError(OceanusError):
    """A wrong option, or a start-up precondition an option controls (``--port`` busy): exit 2."""
