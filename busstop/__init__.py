"""The command line and the local stack: the only package that may import both the gateway and the worker."""
