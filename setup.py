"""The one compiled part: the gateway's reader of its most frequent chunks
(dbaccess/gateway/postgres/_fastwire.c). Optional: where it cannot be built, the gateway
runs the same logic in Python (everything else is in pyproject.toml)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dbaccess.gateway.postgres._fastwire",
            ["dbaccess/gateway/postgres/_fastwire.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
