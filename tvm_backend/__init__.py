"""intvit.tvm_backend: the integer graph through TVM Relax to CPU and CUDA modules.

Importing it sets TVM's CPU thread count to the physical cores unless the
user chose one (``threads``).
"""
from .threads import use_physical_cores

use_physical_cores()
