"""The lab: everything beside the paper's method (see the README's reading order).

Importing it comes first in every entry point (`import lab` before torch), for one setting that
must precede torch: waiting OpenMP threads sleep rather than spin. Beside a busy core (a browser
tab), spinning threads slow training tenfold (lab/bench_busy.py); OpenMP reads the variable once,
when torch loads. An environment that sets it keeps its own value.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
