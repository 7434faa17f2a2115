"""The privacy profiles shipped with inference-sidecar, as package data (issue 4).

A package, not a loose folder, so the YAML files travel in the wheel and are found with
``importlib.resources`` wherever the sidecar is installed. Load them with
``sidecar.privacy.profile.load_profile("strict")``; see that module for the format.
"""
