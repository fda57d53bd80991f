"""Test double of pycuda (``pycuda.driver``, ``pycuda.autoinit``) on the fake GPU."""
