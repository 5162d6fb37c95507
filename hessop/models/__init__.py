"""Small built-in problems for the demo, the tests, the examples and the benchmarks.

``hessop.models.digits``: scikit-learn's bundled 8x8 digits, the small residual CNN ``SmallResNet`` and a short
training loop (PyTorch; ``pip install "hessop[demo]"``).  These are fixtures, not backends: nothing in hessop's
operator or solvers depends on them.
"""
