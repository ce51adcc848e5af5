"""``python -m gpumod.testing.fake_vllm serve MODEL [flags]``."""

import sys

from gpumod.testing.fake_vllm.cli import main

sys.exit(main())
