"""``python -m stream_state``: the same as the ``stream-state`` command."""

from .cli import main

if __name__ == "__main__":
    main()
