"""Examples of network pairs checked with the parity harness (not part of the installed package;
run from the repository root, e.g. `python -m parity --arch examples.conv_velocity:ARCH`)."""
