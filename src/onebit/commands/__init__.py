"""Subcommands of the ``onebit`` CLI: one module each, each exposing ``register(subparsers)``.

A module's ``register`` adds its subparser and sets ``func`` (called with the parsed args, returning an
exit code). Add a new command by writing its module and listing it in ``COMMAND_MODULES``.
"""

COMMAND_MODULES = [
    "onebit.commands.train",
    "onebit.commands.evaluate",
    "onebit.commands.presets",
    "onebit.commands.import_reference",
    "onebit.commands.export",
    "onebit.commands.summary",
    "onebit.commands.sweep",
    "onebit.commands.runs",
    "onebit.commands.report",
    "onebit.commands.bench",
    "onebit.commands.data",
]
