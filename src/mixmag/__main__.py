"""``python -m mixmag`` runs the CLI."""

from mixmag.cli.app import main

if __name__ == "__main__":
    main()
