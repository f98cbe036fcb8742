"""Stacks bundled with edgestack (data only: each folder holds a stack.toml and its GGUF files)."""
