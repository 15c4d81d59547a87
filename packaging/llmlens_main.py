"""Entry script of the standalone bundle: the same `llmlens` command as the installed script
(`app.cli:main`), imported from the build venv's installed copy of the project."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
