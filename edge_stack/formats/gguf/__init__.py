"""GGUF files: a bounds-checked reader, a summary, and checks that match llama.cpp's loader.

See docs/architecture.md for what may import what."""
