"""MAFS-ROS: the ROS 2 layer (node, message conversion, parameters, QoS, diagnostics)."""
