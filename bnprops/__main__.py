"""python -m bnprops: the same as the bnprops console script."""

import sys

from bnprops.commands.cli import main

sys.exit(main())
