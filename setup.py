"""Builds atenet's optional compiled fast path, ``atenet._fast`` (C, OpenSSL's libcrypto).

Everything else is in pyproject.toml. The extension is optional: without a C compiler, the
Python headers or libcrypto's headers the build fails with a warning and atenet runs its pure
Python path (the reference, tested either way; see docs/fastpath.md). ``scripts/setup.sh``
builds it in place with ``python setup.py build_ext --inplace``.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "atenet._fast",
            sources=[
                "csrc/fast/core.c",
                "csrc/fast/tok.c",
                "csrc/fast/node.c",
                "csrc/fast/frag.c",
                "csrc/fast/tokengine.c",
            ],
            depends=["csrc/fast/fast.h"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
