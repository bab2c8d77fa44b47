"""``python -m runner +recipe=NAME [overrides]``: see runner.core.cli."""

from runner.core.cli import main

if __name__ == "__main__":
    main()
