"""``python -m wmel_jax`` is the ``wmel-jax`` command."""

import sys

from wmel_jax.cli import main

sys.exit(main())
