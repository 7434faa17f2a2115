"""Sinks: where events end up. Picked by name through ``sidecar.sinks.registry``."""
