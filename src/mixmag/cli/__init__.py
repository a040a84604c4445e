"""Command-line interface (typer). Commands are thin: parse, build arguments, call one API function."""
