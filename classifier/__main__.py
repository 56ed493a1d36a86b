"""``python -m classifier``: the ``classifier`` command.

Python looks ``classifier`` up in the current folder before the installed package when it runs
``python -m classifier``, so a ``classifier.py`` or ``classifier/`` there runs instead of this;
the ``classifier`` console script never searches the current folder (see the README).
"""

from classifier.cli import entry

if __name__ == "__main__":
    entry()
