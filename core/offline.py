"""Keep every library guardrag loads from phoning home.

Call :func:`disable_outbound` before importing chromadb, onnxruntime,
presidio or spaCy. A guard product must not open connections that nobody
configured: onnxruntime 1.32 makes telemetry DNS lookups, Chroma sends
anonymised telemetry, Hugging Face libraries try the hub, and tldextract
fetches the public suffix list. Each switch below is only a default: a user
who sets the variable keeps their value.
"""

from __future__ import annotations

import os

_DEFAULTS = {
    "ORT_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "CHROMA_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # tldextract (Presidio's e-mail check) fetches the public suffix list unless given no URLs;
    # it then uses the snapshot bundled with it.
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
}


def disable_outbound() -> None:
    """Set the opt-out environment variables (idempotent, keeps user values)."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


disable_outbound()
