"""diffnotes: the algorithms of the review "Opportunities and challenges of diffusion models for generative AI".

Modules are named after the review's concepts; one protocol, ``score(x, t)``, joins targets, networks, losses and
samplers.  See the book for the chapter that uses each module.
"""

__version__ = "0.1.0"
