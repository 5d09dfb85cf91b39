"""The example project of stdlib/python.wf: a tiny calculator."""


def add(a, b):
    return a + b


def evaluate(expression):
    """Evaluate an arithmetic expression.

    Deliberately unsafe: the security scan reports this call to eval.
    """
    return eval(expression)
