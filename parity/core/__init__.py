"""The harness core: architectures (`arch`), input bundles (`inputs`), the two sides' runs
(`harness`), error measures (`compare`), tolerances, precision pinning, the report and the
negative controls."""
