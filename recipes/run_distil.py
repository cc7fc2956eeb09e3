"""Distil a masked LM: `python recipes/run_distil.py CONFIG.yaml [--flag value ...]` (flags override the config).

The logic lives in `hf_distil.recipe`; the same command is installed as `hf-distil`.
"""

import sys

from hf_distil.recipe import main

if __name__ == "__main__":
    sys.exit(main())
