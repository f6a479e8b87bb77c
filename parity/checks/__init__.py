"""The report's checks beyond the objective comparison of each variant (`--checks`): branch
coverage of the bundles (`coverage`), the samplers against each other and NumPy
(`sampler_check`, `sampler_oracle`), dropout rates at train=False (`dropout_eval`), float32
with JAX's x64 off (`x64_off`); the groups and their runner in `checks`."""
