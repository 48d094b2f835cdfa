"""Builds atenet's optional compiled fast path, ``atenet._fast`` (C, OpenSSL's libcrypto, and
libsodium when it is there).

Everything else is in pyproject.toml. The extension is optional: without a C compiler, the
Python headers or libcrypto's headers the build fails with a warning and atenet runs its pure
Python path (the reference, tested either way; see docs/fastpath.md). ``scripts/setup.sh``
builds it in place with ``python setup.py build_ext --inplace``.
"""

import os
import subprocess
import sys
import tempfile

from setuptools import Extension, setup


def _have_sodium() -> bool:
    """Whether libsodium's headers and library link here (Debian: libsodium-dev).

    Optional: with it, packets up to 1 KB are sealed and opened by libsodium's AES-256-GCM,
    which costs ~1.5 µs when the process wakes cold against ~7.6 µs through OpenSSL 3's EVP
    layers (docs/fastpath.md); without it OpenSSL does every size. ATENET_NO_SODIUM=1 skips it.
    """
    if os.environ.get("ATENET_NO_SODIUM", "") not in ("", "0"):
        return False
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <sodium.h>\nint main(void){return sodium_init() < 0;}\n")
        try:
            done = subprocess.run(
                [cc, src, "-o", os.path.join(tmp, "t"), "-lsodium"],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


SODIUM = _have_sodium()
if not SODIUM:
    print("atenet._fast: building without libsodium (OpenSSL seals every size)", file=sys.stderr)

setup(
    ext_modules=[
        Extension(
            "atenet._fast",
            sources=[
                "csrc/fast/core.c",
                "csrc/fast/tok.c",
                "csrc/fast/node.c",
                "csrc/fast/frag.c",
                "csrc/fast/nodeengine.c",
                "csrc/fast/tokengine.c",
            ],
            depends=["csrc/fast/fast.h"],
            libraries=["crypto", "sodium"] if SODIUM else ["crypto"],
            define_macros=[("AT_HAVE_SODIUM", "1")] if SODIUM else [],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
