"""The ``wna16`` subcommands this distribution adds (entry-point group ``wna16.commands``): ``conform`` runs the
suite and writes the matrix, ``matrix`` merges reports. Each module defines ``add_arguments(parser)`` and
``run(args) -> int``."""
