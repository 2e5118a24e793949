"""`python -m squeezecaffe`: the command line, as `torchrun -m squeezecaffe train` starts it on every rank."""

import sys

from squeezecaffe.cli import main

sys.exit(main())
