"""The sidecar's side of the detectors (``detectors/``): what they read from a request
(``observed``, ``extract``), the enforce-mode gate on the request path (``gate``), the
worker process that runs the monitor-mode set (``service``), and hot reload (``reload``).
The pipeline stage that calls the worker is ``sidecar/pipeline/detection.py``."""
