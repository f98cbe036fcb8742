"""The stack builder: from a recipe (checkpoints, PEFT adapters, prompts) to a stack folder.

Installed as ``edge_stack.builder``; it uses the converter (``edge_stack.convert``) and the
runtime's checks, and the runtime never imports it. See docs/architecture.md."""
