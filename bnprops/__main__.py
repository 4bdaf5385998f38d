"""python -m bnprops: the same as the bnprops console script."""

import sys

from bnprops.cli import main

sys.exit(main())
