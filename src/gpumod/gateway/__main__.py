"""`python -m gpumod.gateway serve --config FILE`: see gpumod.gateway.server."""

import sys

from gpumod.gateway.server import main

sys.exit(main())
