"""`python -m parity.bench`: see parity/bench/run.py."""
import sys

from parity.bench.run import main

sys.exit(main())
