"""ROS 2 node and tools for MOBIUS. Imports no rclpy at package import time.

The generated interfaces (``mobius_ros.msg``, ``mobius_ros.srv``) are installed into the
same import package by CMake; ``extend_path`` lets them be found even when this source
folder shadows the installed package (docs/ARCHITECTURE.md §5).
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)
