"""Tools on top of the pipeline: the run log, eval, bench and doctor.

See docs/architecture.md for what may import what."""
