"""dbaccess: just-in-time database sessions instead of shared passwords."""

__version__ = "0.1.0"
