"""The switch between job servers: `type:` in the config names one of these backends."""

from __future__ import annotations

import importlib

from workermanager.backends.base import Backend, BackendError

#: config `type:` (case-insensitive) -> "module:Class"; adding a backend touches only this folder
REGISTRY = {
    "theschwartz": "workermanager.backends.theschwartz:TheSchwartzBackend",
    "gearman": "workermanager.backends.gearman:GearmanBackend",
}


def backend_class(type_name: str) -> type[Backend]:
    """The Backend class for a config `type:`; ValueError names the known types."""
    try:
        target = REGISTRY[type_name.lower()]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown backend type {type_name!r} (known: {known})") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Backend", "BackendError", "REGISTRY", "backend_class"]
