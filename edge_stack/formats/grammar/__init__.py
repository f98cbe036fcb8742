"""GBNF grammars: a parser that mirrors llama.cpp's, with limits and checks.

See docs/architecture.md for what may import what."""
