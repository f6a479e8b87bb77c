"""The suite: the loop over variants, dtypes and devices with the checks (`run`), the report
and its blame (`report`), and the API `parity.check` (`api`). It sits above the harness core,
the debugger and the checks, and imports each of them; none of them imports it."""
