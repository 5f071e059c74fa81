"""``python -m tdlens`` runs the command line."""

from tdlens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
