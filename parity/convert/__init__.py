"""Weight conversion: the table-driven engine (`engine`), one table per built-in network
(`tables/`), and checkpoint files on both sides (`checkpoints`). The engine imports neither
backend."""
from parity.convert.engine import (  # noqa: F401
    KINDS,
    ConversionError,
    ConversionShapeError,
    Rule,
    Table,
    expand_rules,
    flatten_tree,
    iter_jax_to_torch,
    jax_to_torch,
    torch_to_jax,
    unflatten_tree,
)
from parity.convert.engine import __all__  # noqa: F401
