"""CLI commands: each module defines HELP, add_parser(parser) and run(args) -> exit code."""
