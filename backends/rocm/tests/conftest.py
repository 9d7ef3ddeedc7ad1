"""The kernel tests run under the Triton interpreter on CPU tensors: request it before anything imports triton.

This is the deliberate, documented switch, set for the processes that run this test directory (pytest loads this
file at startup when the directory is named on the command line, before collecting any test module). Both variables
are set so that whatever imports triton first in the process, triton and these kernels agree on the mode. Tests of
what happens *without* the interpreter run in subprocesses with a controlled environment (test_backend.py,
check_gpu_compile.py).
"""

import os

os.environ.setdefault("WNA16_TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")
