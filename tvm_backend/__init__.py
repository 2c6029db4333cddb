"""intvit.tvm_backend."""
