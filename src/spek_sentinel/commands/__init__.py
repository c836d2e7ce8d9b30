"""One module per `spek-sentinel` subcommand: ``add_parser`` and ``run(args, out, err)``."""
