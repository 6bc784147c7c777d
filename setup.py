"""Kept so that `pip install .` works with older pip; all metadata is in setup.cfg."""
from setuptools import setup

setup()
