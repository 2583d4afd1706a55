"""The terminal face of lba: the ``lba`` command line (``cli``) and the ``lba-tui`` app.

Nothing here imports torch at module level: the app reads the SQLite store and starts runs as
separate ``lba`` processes; only the command line calls the engine, inside its commands.
"""
