"""``python -m numpyro_ebm``: the ``numpyro-ebm`` command line."""

import sys

from numpyro_ebm.cli import main

if __name__ == "__main__":
    sys.exit(main())
