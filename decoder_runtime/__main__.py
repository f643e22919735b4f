"""``python -m coolchic.decoder_runtime``: the same as ``coolchic-decode``."""

from .cli import main

raise SystemExit(main())
