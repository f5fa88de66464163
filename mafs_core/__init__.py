"""MAFS core: network, engine, training, metrics and bag tools. Never imports ROS."""

__version__ = "0.1.0"
