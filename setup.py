"""Build of the optional C parts: the header walk (gateway/wire/_speedups.c), the
statement shape (gateway/sql/_shape.c), the audit trail's fast path
(gateway/session/_trail.c), the audit writer's event buffer (gateway/audit/_pending.c) and
direct socket I/O for established sessions
(gateway/server/_fastio.c).

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
            depends=["gateway/wire/_walk.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "gateway.session._trail",
            ["gateway/session/_trail.c"],
            depends=["gateway/wire/_walk.h", "gateway/audit/_pending.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "gateway.audit._pending",
            ["gateway/audit/_pending.c"],
            depends=["gateway/audit/_pending.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "gateway.server._fastio",
            ["gateway/server/_fastio.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "gateway.sql._shape",
            ["gateway/sql/_shape.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
