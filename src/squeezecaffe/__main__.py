"""`python -m squeezecaffe` (what `torchrun ... -m squeezecaffe train ...` starts on every rank)."""

import sys

from squeezecaffe.cli import main

sys.exit(main())
