"""Engines behind the pipeline's backend interface (:mod:`edge_stack.engines._backend`).

See docs/architecture.md for what may import what."""
