"""`python -m einfuse` is the `einfuse` command."""

import sys

from einfuse.cli import main

sys.exit(main())
