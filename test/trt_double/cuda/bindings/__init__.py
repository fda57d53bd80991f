"""Test double of ``cuda.bindings`` (only ``runtime``)."""
