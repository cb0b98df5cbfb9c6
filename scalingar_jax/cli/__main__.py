"""`python -m scalingar_jax.cli ...`: the `scalingar` program."""
import sys

from scalingar_jax.cli import main

sys.exit(main())
