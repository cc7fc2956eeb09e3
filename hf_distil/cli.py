"""The `hf-distil` console command: `hf-distil CONFIG.yaml [--flag value ...]`."""

import sys

from .recipe import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
