"""Configs: the shared dataclasses (see `meanflow_common.config`), re-exported so both
backends read the same field names and defaults."""
from meanflow_common.config import *  # noqa: F401,F403
from meanflow_common.config import __all__  # noqa: F401
