"""ament_python package `mafs_ros`; installs mafs_core and mafs_ros. Also pip-installable."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mafs_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["mafs_core", "mafs_core.*", "mafs_ros", "mafs_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*")),
        (f"share/{PACKAGE}/weights", glob("weights/*.safetensors") + glob("weights/*.json")),
    ],
    install_requires=["setuptools"],
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="MAFS-ROS developers",
    maintainer_email="mafs-ros@example.org",
    description="Infrared-visible image fusion and semantic segmentation (MAFS) as a ROS 2 node",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "mafs_node = mafs_ros.node:main",
            "mafs-node = mafs_ros.node:main",
            "mafs = mafs_ros.cli:main",
            "mafs_wait_active = mafs_ros.lifecycle_wait:main",
        ],
    },
)
