"""File formats, parsed and validated in pure Python before llama.cpp sees them.

See docs/architecture.md for what may import what."""
