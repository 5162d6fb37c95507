"""Backends supply Hessian-vector products on their own arrays and devices.

Every backend implements :class:`hessop.backends.base.Backend`.  Framework imports (torch, jax, cupy) happen only
inside the backend modules, and only when a backend is used: ``import hessop`` needs numpy and scipy alone.
"""
