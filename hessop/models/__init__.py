"""Small built-in problems for the demo, the tests, the examples and the benchmarks.

``hessop.models.digits``: scikit-learn's bundled 8x8 digits, the small residual CNN ``SmallResNet`` and a short
training loop (PyTorch; ``pip install "hessop[demo]"``); ``hessop.models.linear``: a linear least-squares problem
whose Hessian is known exactly (PyTorch).  These are fixtures, not backends: nothing in hessop's
operator or solvers depends on them.
"""
