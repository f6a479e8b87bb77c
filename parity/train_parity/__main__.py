"""`python -m parity.train_parity`: see parity/train_parity/run.py."""
import sys

from parity.train_parity.run import main

sys.exit(main())
