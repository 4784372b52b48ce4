"""Every public callable of the listed modules documents every argument in a numpydoc ``Parameters`` section.

``help(f)`` is how a reader of the book meets a function; it must say what each argument is.  For every module in
:data:`DOCUMENTED_MODULES`, every public callable (the names in the module's ``__all__``, or those not starting with
``_`` when it has none) that is defined in that module and takes arguments is checked:

* a function or a public method (defined in the class body, staticmethods and classmethods included): its
  docstring as ``help`` shows it (:func:`inspect.getdoc`: a method overriding a documented one without a docstring
  of its own shows the parent's) has a ``Parameters`` section naming every parameter of its signature;
* a class: its docstring (or its ``__init__``'s) has a ``Parameters`` section naming every argument of the
  constructor; a dataclass or a named tuple may list its fields under ``Attributes`` instead.

``self``/``cls`` and ``*args``/``**kwargs`` are not required.  A section is a heading line followed by a line of
dashes; a parameter line sits at the section's indentation and reads ``name : type``, ``name`` or ``x, y : float``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

#: Modules whose public callables are fully documented (all of the package's).  diffnotes.gmm_learning only
#: re-exports diffnotes.optimization, checked here.
DOCUMENTED_MODULES = [
    "diffnotes.sde",
    "diffnotes.losses",
    "diffnotes.guidance",
    "diffnotes.metrics",
    "diffnotes.oracle",
    "diffnotes.data",
    "diffnotes.claims",
    "diffnotes.inpainting",
    "diffnotes.manifold",
    "diffnotes.localization",
    "diffnotes.acceleration",
    "diffnotes.spins",
    "diffnotes.ising",
    "diffnotes.images",
    "diffnotes.audio",
    "diffnotes.control",
    "diffnotes.robustness",
    "diffnotes.dro",
    "diffnotes.optimization",
    "diffnotes.parameterization",
    "diffnotes.training",
    "diffnotes.rates",
    "diffnotes.plotting",
    "diffnotes.reward",
    "diffnotes.sequences",
    "diffnotes.molecules",
    "diffnotes.planning",
    "diffnotes.samplers",
    "diffnotes.networks",
    "diffnotes.stochastic_control",
    "diffnotes.targets",
    "diffnotes.estimators",
    "diffnotes.finetune",
    "diffnotes.discrete",
]


def numpydoc_sections(doc: str | None) -> dict[str, list[str]]:
    """The numpydoc sections of ``doc``: heading -> the lines below its dashed underline (dedented)."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    heads = [
        i
        for i in range(len(lines) - 1)
        if lines[i].strip() and set(lines[i + 1].strip()) == {"-"} and len(lines[i + 1].strip()) >= 3
    ]
    sections = {}
    for k, i in enumerate(heads):
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        sections[lines[i].strip()] = lines[i + 2 : end]
    return sections


def documented_names(section: list[str]) -> set[str]:
    """The parameter names of a section's lines: those at the section's indentation, before any ``" : "``."""
    body = [line for line in section if line.strip()]
    if not body:
        return set()
    indent = min(len(line) - len(line.lstrip()) for line in body)
    names = set()
    for line in body:
        if len(line) - len(line.lstrip()) != indent:
            continue
        head = line.strip().split(" : ", 1)[0]
        for name in head.split(","):
            name = name.strip().lstrip("*").strip()
            if name.isidentifier():
                names.add(name)
    return names


def required_parameters(obj) -> list[str]:
    """The parameters of ``obj``'s signature a docstring must name (not self/cls, not *args/**kwargs)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind not in skip and p.name not in ("self", "cls")]


def missing_parameters(obj, doc: str | None = None, *, sections=("Parameters",)) -> list[str]:
    """The required parameters of ``obj`` that no ``sections`` of its docstring (or ``doc``) names.

    The docstring is the one ``help(obj)`` shows (:func:`inspect.getdoc`): a method that overrides a documented
    one without a docstring of its own inherits the parent's.
    """
    params = required_parameters(obj)
    if not params:
        return []
    secs = numpydoc_sections(inspect.getdoc(obj) if doc is None else doc)
    names = set().union(*(documented_names(secs[s]) for s in sections if s in secs))
    return [p for p in params if p not in names]


def public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return list(names)


def _is_namedtuple(cls) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _class_problems(qual: str, cls) -> list[str]:
    problems = []
    init = cls.__dict__.get("__init__")
    record = dataclasses.is_dataclass(cls) or _is_namedtuple(cls)
    if init is not None or record:
        sections = ("Parameters", "Attributes") if record else ("Parameters",)
        doc = "\n".join(d for d in (cls.__doc__, getattr(init, "__doc__", None)) if d)
        missing = missing_parameters(cls, doc, sections=sections)
        if missing:
            problems.append(f"{qual}: constructor arguments {missing} not documented")
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        func = member.__func__ if isinstance(member, staticmethod | classmethod) else member
        if not inspect.isfunction(func):
            continue
        missing = missing_parameters(getattr(cls, name))
        if missing:
            problems.append(f"{qual}.{name}: {missing} not documented")
    return problems


def module_problems(module_name: str) -> list[str]:
    """Every undocumented parameter of the public callables of ``module_name``, one line each."""
    module = importlib.import_module(module_name)
    problems = []
    for name in public_names(module):
        obj = getattr(module, name)
        if getattr(obj, "__module__", None) != module_name:
            continue  # re-exported: checked where it is defined
        qual = f"{module_name}.{name}"
        if inspect.isclass(obj):
            problems.extend(_class_problems(qual, obj))
        elif callable(obj):
            missing = missing_parameters(obj)
            if missing:
                problems.append(f"{qual}: {missing} not documented")
    return problems


@pytest.mark.parametrize("module_name", DOCUMENTED_MODULES)
def test_every_public_argument_is_documented(module_name):
    problems = module_problems(module_name)
    assert not problems, "\n".join(problems)


# -- the checker itself ------------------------------------------------------------------------------------------
def _good(x, y, *, scale=1.0, **kwargs):
    """Add.

    Parameters
    ----------
    x, y : float
        The summands.
    scale
        A factor, default 1.

    Returns
    -------
    float
        ``scale * (x + y)``.
    """
    return scale * (x + y)


def _bad(x, y, scale=1.0):
    """Add; ``scale`` is mentioned in the prose but not in the section.

    Parameters
    ----------
    x : float
        First summand.

    Returns
    -------
    y : float
        Not a parameter: a section other than Parameters does not count.
    """
    return scale * (x + y)


def _no_section(x):
    """Identity of ``x``, with no section."""
    return x


def test_checker_accepts_grouped_untyped_names_and_ignores_kwargs():
    assert missing_parameters(_good) == []
    assert documented_names(numpydoc_sections(_good.__doc__)["Parameters"]) == {"x", "y", "scale"}


def test_checker_reports_undocumented_parameters():
    assert missing_parameters(_bad) == ["y", "scale"]
    assert missing_parameters(_no_section) == ["x"]


def test_checker_on_classes_methods_and_dataclasses():
    class Documented:
        """A thing.

        Parameters
        ----------
        a : int
            A number.
        """

        def __init__(self, a):
            self.a = a

        def method(self, b):
            """Use ``b``.

            Parameters
            ----------
            b : int
                Another number.
            """
            return self.a + b

        @staticmethod
        def helper(c):
            """Nothing said about c."""
            return c

    problems = _class_problems("Documented", Documented)
    assert problems == ["Documented.helper: ['c'] not documented"]

    @dataclasses.dataclass
    class Result:
        """A result.

        Attributes
        ----------
        value : float
            The value.
        """

        value: float
        error: float

    assert _class_problems("Result", Result) == ["Result: constructor arguments ['error'] not documented"]


if __name__ == "__main__":  # list the gaps of any modules: python tests/test_docstrings.py diffnotes.sde ...
    import sys

    for mod in sys.argv[1:]:
        for line in module_problems(mod):
            print(line)
