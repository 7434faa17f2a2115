"""The request path, one module per stage: receive (protocol) → filters → upstream → relay
→ stamp, orchestrated by ``handler``."""
