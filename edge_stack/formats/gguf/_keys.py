"""GGUF metadata keys of edgestack's own: facts llama.cpp has no key for.

gguf's ``Keys`` cover everything llama.cpp reads; these are read by edgestack's runtime only,
and llama.cpp ignores them.
"""

from __future__ import annotations

#: Unicode normalization the Hugging Face tokenizer applies before splitting ("NFC"), which
#: llama.cpp does not do for byte-level BPE: the runtime applies it before llama.cpp tokenizes.
TOKENIZER_NORMALIZER = "edgestack.tokenizer.normalizer"

#: "first" when the Hugging Face tokenizer (transformers' ``Metaspace(prepend_scheme="first")``)
#: puts no "▁" in front of a text that already starts with a space, where llama.cpp's
#: ``add_space_prefix`` always does: the runtime then drops that one leading space first.
TOKENIZER_SPACE_PREFIX = "edgestack.tokenizer.space_prefix"
