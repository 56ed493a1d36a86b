"""``python -m classifier`` is the ``classifier`` command."""

from classifier.cli import entry

if __name__ == "__main__":
    entry()
