"""As pycuda.autoinit: initialise and make a context on device 0 current."""

from . import driver

driver.init()
device = driver.Device(0)
context = device.make_context()
