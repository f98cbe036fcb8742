"""Small utilities every layer may use: the environment, paths, atomic writes, pins, limits, TOML.

See docs/architecture.md for what may import what."""
