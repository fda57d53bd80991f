"""Test double of cuda-python (``cuda.bindings.runtime``) on the fake GPU."""
