"""The pipeline: a stack answering questions stage by stage, events, batching.

See docs/architecture.md for what may import what."""
