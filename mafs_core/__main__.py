import sys

from mafs_core.cli import main

sys.exit(main())
