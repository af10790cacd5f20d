"""Build of the optional C header walk (gateway/wire/_speedups.c).

Everything else is in pyproject.toml. The extension is optional: if it cannot be
compiled, pgwarden runs the pure-Python walk in gateway/wire/scan.py with the same
behaviour, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.wire._speedups",
            ["gateway/wire/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
